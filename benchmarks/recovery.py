"""The recovery test: is one agent's recovery after the shift faster than another's?

Reads web-simulator result files (``benchmarks/results/web-*.json``), pairs the two agents'
``recovery_visitors`` by seed and applies the test that the held-out seed sets were judged by
(docs/benchmarks.md, "Held out"): Wilcoxon's signed-rank test, two-sided, on the paired
differences (scipy's default: zero differences dropped), with the paired median's sign. A seed
an agent never recovered on counts as one visitor more than any recovery possible in its run.

    python -m benchmarks.recovery benchmarks/results/web-a.json benchmarks/results/web-b.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.paired import Paired, collect


class RecoveryTest(Paired):
    """Paired recovery visitors of ``agent`` minus ``peer`` over ``seeds``."""

    def faster(self, alpha: float = 0.05) -> bool:
        """The rule: p below ``alpha`` and the paired median negative (fewer visitors)."""
        return self.p_value < alpha and float(np.median(self.differences)) < 0

    def report(self) -> str:
        d = self.differences
        return (f"{len(d)} seeds ({min(self.seeds)}-{max(self.seeds)}): recovery median "
                f"{np.median(self.agent):.0f} against {np.median(self.peer):.0f} visitors; "
                f"faster on {int((d < 0).sum())}, slower on {int((d > 0).sum())}, "
                f"{int((d == 0).sum())} ties; paired median {np.median(d):+.1f}, paired mean "
                f"{self.summary.fmt(0)}; Wilcoxon signed-rank p = {self.p_value:.4f}; "
                f"faster at p < 0.05: {'yes' if self.faster() else 'no'}")


def pair(results: Sequence[dict[str, Any]], agent: str, peer: str) -> RecoveryTest:
    """The two agents' recoveries, by seed, over every result file (seeds must not repeat)."""
    paired = collect(results, agent, peer, "recovery_visitors", missing=_never)
    return RecoveryTest(paired.metric, paired.seeds, paired.agent, paired.peer)


def _never(result: dict[str, Any]) -> float:
    """A run that never recovered: one visitor more than any recovery possible in it."""
    cfg = result["config"]
    return float(cfg["horizon"] - cfg["shift_at"] + 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="web benchmark result files")
    parser.add_argument("--agent", default="ef:thompson")
    parser.add_argument("--peer", default="vw-squarecb")
    args = parser.parse_args(argv)
    results = [json.loads(p.read_text()) for p in args.files]
    print(pair(results, args.agent, args.peer).report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
