"""Choose Vowpal Wabbit's learning rate and SquareCB's gamma scale on development seeds.

The engine's settings were tuned on development seeds; a fair peer gets the same treatment.
This runs VW (``--cb_explore_adf --squarecb -q UA`` plus each setting of the grid) on the
same streams, seeds 0-7 by default (development seeds: the held-out comparisons use others),
and ranks the settings by their mean regret relative to uniform = 100 (on the web simulator,
lower regret is the same order as more expected conversions on the same streams).

    python -m benchmarks.vw_tune magic
    python -m benchmarks.vw_tune web --extra "--interactions UUA"   # beyond the issue's -q UA
    python -m benchmarks.vw_tune mushroom --rates 0.1,0.5 --gammas 10,30

Prints a Markdown table (best first, mean ± 95% t-interval over seeds) and writes every seed's
figure to ``benchmarks/results/vw-tune-<problem>.json`` (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.agents.vw import DEFAULT_ARGS, vw_spec
from benchmarks.learning import run_experiment
from benchmarks.problems.base import Problem
from benchmarks.problems.uci import Magic, Mushroom
from benchmarks.problems.websim import WebSim
from benchmarks.progress import Progress
from benchmarks.report import table, write_json
from benchmarks.stats import summarize
from benchmarks.suites import DEFAULTS

RATES = (0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # VW's -l (its default: 0.5)
GAMMAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)  # SquareCB's --gamma_scale (default: 10)


def _numbers(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def settings(rates: Sequence[float], gammas: Sequence[float], extra: str) -> list[str]:
    """The VW command lines of the grid (VW's own defaults are ``-l 0.5``, gamma scale 10:
    those settings are left to them, so the default setting is spelt as the benchmark's)."""
    out: list[str] = []
    for rate in rates:
        for gamma in gammas:
            parts = [DEFAULT_ARGS]
            if rate != 0.5:
                parts.append(f"-l {rate:g}")
            if gamma != 10.0:
                parts.append(f"--gamma_scale {gamma:g}")
            if extra:
                parts.append(extra)
            if " ".join(parts) not in out:
                out.append(" ".join(parts))
    return out


def problem_of(name: str) -> Problem:
    """The benchmark's problem as ``scripts/bench`` builds it by default (the web simulator
    with its shift halfway); only regret is compared, so no recovery metrics."""
    return {"mushroom": Mushroom, "magic": Magic, "web": WebSim}[name]()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vw_tune",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("problem", choices=("mushroom", "magic", "web"))
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=None,
                        help="steps per seed (default: the benchmark's full size)")
    parser.add_argument("--rates", type=_numbers, default=RATES, help="comma-separated -l values")
    parser.add_argument("--gammas", type=_numbers, default=GAMMAS,
                        help="comma-separated --gamma_scale values")
    parser.add_argument("--extra", default="", help="VW arguments added to every setting")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    problem = problem_of(args.problem)
    horizon = args.horizon or DEFAULTS[args.problem][0][0]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    specs = [vw_spec(a) for a in settings(args.rates, args.gammas, args.extra.strip())]
    bar = Progress(len(seeds) * len(specs) * horizon, f"vw-tune {args.problem}",
                   not args.no_progress)
    start = time.perf_counter()
    runs = run_experiment(problem, specs, seeds, horizon, [horizon], progress=bar)
    wall = time.perf_counter() - start

    per_setting: dict[str, dict[int, float]] = {}
    for run in runs:
        if run.kind == "vw":
            regret = run.metrics["relative_regret"]
            assert regret is not None
            per_setting.setdefault(run.agent, {})[run.seed] = regret
    ranked = sorted(per_setting.items(), key=lambda item: summarize(list(item[1].values())).mean)
    rows = []
    for agent, by_seed in ranked:
        s = summarize(list(by_seed.values()))
        rows.append([agent.removeprefix("vw[").removesuffix("]") if agent != "vw-squarecb"
                     else DEFAULT_ARGS, f"{s.mean:.2f} ± {s.ci:.2f}"])
    text = table(["VW arguments", "relative regret (uniform = 100)"], rows)
    print(f"\n## vw-tune {args.problem}: T={horizon}, seeds {seeds[0]}-{seeds[-1]}, "
          f"wall {wall:.0f}s\n\n{text}\n")
    payload: dict[str, Any] = {
        "command": "python -m benchmarks.vw_tune " + shlex.join(sys.argv[1:] if argv is None
                                                                 else argv),
        "config": {"problem": args.problem, "horizon": horizon, "seeds": seeds,
                   "extra": args.extra},
        "wall_seconds": wall,
        "settings": [{"agent": agent, "relative_regret": by_seed}
                     for agent, by_seed in ranked],
        "table": text,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"[bench] wrote {args.json}", file=sys.stderr)
    else:
        print(f"[bench] wrote {write_json(f'vw-tune-{args.problem}', payload)}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
