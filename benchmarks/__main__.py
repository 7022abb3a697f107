"""Command line: ``python -m benchmarks speed|mushroom|magic|web|all [--quick] ...``, and
``python -m benchmarks web-throughput [...]`` and ``python -m benchmarks stalls [...]`` (their own
options: ``web-throughput --help``, ``stalls --help``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.agents.engine import engine_strategies
from benchmarks.agents.vw import DEFAULT_ARGS

BENCHMARKS = ("speed", "mushroom", "magic", "web")


def _strategies(text: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    if text.strip().lower() == "all":
        return list(engine_strategies())
    return [s.strip() for s in text.split(",") if s.strip()]


def _loop_settings(text: str) -> dict[str, int | float | str]:
    """``key=value,key=value`` -> LoopSettings overrides (numbers parsed)."""
    out: dict[str, int | float | str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        for kind in (int, float):
            try:
                out[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value.strip()
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("benchmark", choices=(*BENCHMARKS, "all"),
                   help="or web-throughput (requests/s and latency of the example site), or "
                        "stalls (rank() stalls while the engine's threads work)")
    p.add_argument("--quick", action="store_true", help="small horizons and 2-3 seeds")
    p.add_argument("--seeds", type=int, default=0, help="number of seeds (default per benchmark)")
    p.add_argument("--first-seed", type=int, default=10,
                   help="seeds are first..first+N-1 (default 10: the engine's settings were "
                        "tuned on seeds 0-3, so the reported runs are held out)")
    p.add_argument("--horizon", type=int, default=0, help="steps per run (default per benchmark)")
    p.add_argument(
        "--strategies",
        type=_strategies,
        default=None,
        help="engine strategies, comma-separated, 'all' (default) or 'none'",
    )
    p.add_argument(
        "--flush-every",
        type=int,
        default=1,
        help="call loop.flush() after this many rewards (1 = learn every step)",
    )
    p.add_argument(
        "--sync-learner",
        action="store_true",
        help="Engine(learner=False): learn inside flush() instead of the thread",
    )
    p.add_argument(
        "--loop-settings",
        type=_loop_settings,
        default={},
        help="LoopSettings for every engine agent, e.g. min_batch_size=32,posterior_window=1024"
             " (the agents' names then carry them); model.x=v sets a ModelConfig field,"
             " option.x=v a strategy option (e.g. option.noise=0.35)",
    )
    p.add_argument("--no-vw", action="store_true", help="skip the Vowpal Wabbit peer")
    p.add_argument("--vw-args", default=DEFAULT_ARGS, help=f"VW arguments ({DEFAULT_ARGS!r})")
    p.add_argument("--no-tuned-vw", action="store_true",
                   help="skip the second VW peer, tuned per problem on seeds 0-7 "
                        "(benchmarks/agents/vw.py, TUNED)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar on stderr")
    p.add_argument("--results-dir", type=Path, default=None, help="default: benchmarks/results")
    web = p.add_argument_group("web simulator")
    web.add_argument(
        "--shift-at",
        type=float,
        default=0.5,
        help="population shift at this fraction of the horizon (or visitor if > 1)",
    )
    web.add_argument("--shift-kind", default="both", choices=("both", "preferences", "mix", "none"))
    web.add_argument(
        "--recovery-window",
        type=int,
        default=0,
        help="visitors after the shift to sum regret over (default min(1000, T/3))",
    )
    web.add_argument("--ma-window", type=int, default=200, help="moving-average window")
    web.add_argument(
        "--tolerance",
        type=float,
        default=0.2,
        help="recovered when the MA reward is within this fraction of the oracle",
    )
    web.add_argument(
        "--early-seeds", type=int, default=20, help="seeds for the first-visitors check"
    )
    web.add_argument(
        "--early-horizon", type=int, default=200, help="visitors in the first-visitors check"
    )
    speed = p.add_argument_group("speed")
    speed.add_argument("--ks", default="10,100,1000", help="action counts for rank latency")
    speed.add_argument(
        "--calls", type=int, default=0, help="timed calls per measurement (default 1000, quick 200)"
    )
    speed.add_argument(
        "--sustained", type=float, default=3000.0,
        help="rewards/s sent to the learner thread for 8 s (quick: 4 s), with and without "
             "replay_backlog (0: skip)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # The engine loads its sentence-transformer once per process: keep its log chatter quiet.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    rest = list(sys.argv[1:] if argv is None else argv)
    if rest[:1] == ["web-throughput"]:  # the web server benchmark has options of its own
        from benchmarks.web_throughput import main as web_throughput

        return web_throughput(rest[1:], prog="python -m benchmarks web-throughput")
    if rest[:1] == ["stalls"]:  # so has the stalls benchmark
        from benchmarks.stalls import main as stalls

        return stalls(rest[1:], prog="python -m benchmarks stalls")
    args = parser().parse_args(argv)
    import benchmarks.report  # noqa: F401  (records the engine's source digest at start)

    if args.strategies is None:
        args.strategies = list(engine_strategies())
    chosen = BENCHMARKS if args.benchmark == "all" else (args.benchmark,)
    walls: dict[str, float] = {}
    for name in chosen:
        start = time.perf_counter()
        if name == "speed":
            from benchmarks.speed import run_speed

            run_speed(args)
        elif name == "web":
            from benchmarks.websuite import run_web

            run_web(args)
        else:
            from benchmarks.suites import run_uci

            run_uci(args, name)
        walls[name] = time.perf_counter() - start
    if len(walls) > 1:
        print("wall-clock: " + ", ".join(f"{k} {v:.0f}s" for k, v in walls.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
