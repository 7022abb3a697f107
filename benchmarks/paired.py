"""Paired comparison of two agents over seeds, read from learning-benchmark result files.

Pairs one metric of two agents by seed, over any number of result files (the agents may come
from different runs on the same seeds), and reports the paired mean difference with its 95%
t-interval, the counts of seeds each way, the paired median and Wilcoxon's signed-rank test
(two-sided, scipy's default: zero differences dropped). These are the figures the pre-registered
rules in docs/benchmarks.md are judged by.

    python -m benchmarks.paired --metric relative_regret \\
        --agent 'ef:thompson[correction_rate=2]' --peer vw-squarecb mushroom-a.json mushroom-b.json
    python -m benchmarks.paired --block early --metric regret --peer uniform web-first.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from benchmarks.stats import Summary, summarize

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class Paired:
    """``metric`` of ``agent`` and ``peer`` on the same ``seeds``."""

    metric: str
    seeds: tuple[int, ...]
    agent: tuple[float, ...]
    peer: tuple[float, ...]

    @property
    def differences(self) -> FloatArray:
        out: FloatArray = np.subtract(self.agent, self.peer, dtype=np.float64)
        return out

    @property
    def summary(self) -> Summary:
        """Paired mean difference (agent minus peer) with its 95% t-interval."""
        return summarize(self.differences.tolist())

    @property
    def p_value(self) -> float:
        """Wilcoxon signed-rank, two-sided (1.0 when every pair ties)."""
        if not np.any(self.differences):
            return 1.0
        return float(stats.wilcoxon(self.agent, self.peer).pvalue)

    def interval(self) -> str:
        """Where the 95% interval of the paired difference lies: below, above or across 0."""
        s = self.summary
        if s.high < 0:
            return "below zero"
        if s.low > 0:
            return "above zero"
        return "includes zero"

    def report(self) -> str:
        d = self.differences
        return (f"{self.metric}, {len(d)} seeds ({min(self.seeds)}-{max(self.seeds)}): "
                f"{np.mean(self.agent):.2f} against {np.mean(self.peer):.2f}; paired "
                f"difference {self.summary.fmt(2)} (95% interval {self.interval()}); lower on "
                f"{int((d < 0).sum())}, higher on {int((d > 0).sum())}, "
                f"{int((d == 0).sum())} ties; paired median {np.median(d):+.2f}; Wilcoxon "
                f"signed-rank p = {self.p_value:.4f}")


Missing = Callable[[dict[str, Any]], float]


def collect(results: Sequence[dict[str, Any]], agent: str, peer: str, metric: str, *,
            block: str = "runs", missing: Missing | None = None) -> Paired:
    """Both agents' ``metric`` by seed over every result file (a seed must not repeat).

    ``block`` is ``"runs"`` (the main runs) or ``"early"`` (the web benchmark's first-visitors
    check). A metric recorded as ``None`` takes ``missing(result)``, or raises without it.
    """
    found: dict[int, dict[str, float]] = {}
    for result in results:
        runs = result["runs"] if block == "runs" else (result.get(block) or {}).get("runs", [])
        for run in runs:
            if run["agent"] not in (agent, peer):
                continue
            value = run["metrics"].get(metric)
            if value is None:
                if missing is None:
                    raise ValueError(f"{run['agent']} has no {metric!r} on seed {run['seed']}")
                value = missing(result)
            per_seed = found.setdefault(int(run["seed"]), {})
            if run["agent"] in per_seed:
                raise ValueError(f"seed {run['seed']} of {run['agent']} appears twice")
            per_seed[run["agent"]] = float(value)
    seeds = tuple(sorted(s for s, v in found.items() if agent in v and peer in v))
    if not seeds:
        raise ValueError(f"no seed has both {agent!r} and {peer!r}")
    return Paired(metric, seeds, tuple(found[s][agent] for s in seeds),
                  tuple(found[s][peer] for s in seeds))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paired", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="benchmark result files")
    parser.add_argument("--metric", default="relative_regret",
                        help="a per-run metric, e.g. relative_regret, expected_reward, lift_pct")
    parser.add_argument("--agent", default="ef:thompson")
    parser.add_argument("--peer", default="vw-squarecb")
    parser.add_argument("--block", choices=("runs", "early"), default="runs",
                        help="main runs, or the web benchmark's first-visitors check")
    args = parser.parse_args(argv)
    results = [json.loads(p.read_text()) for p in args.files]
    print(collect(results, args.agent, args.peer, args.metric, block=args.block).report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
