"""How long ``Loop.rank()`` stalls under a catalogue's load while the engine's background
threads work: ``scripts/bench stalls [--duration 150] [--skip 30] [--compare REV] [...]``.

Why: the learner and embedder threads share the interpreter lock with the request path. A
rank waits whenever one of them holds the lock, and a thread holds it through a single long C
call (a big numpy product, a store write, a garbage collection that walks every tracked
object) however short the switch interval. The request path can stall on its own work too (a
big memo or cache cleared in one go). None of this shows in a rank's median, only in its tail:
this benchmark measures that tail under a steady load.

The load is the lab driver's of the twenty-seventh stop (:mod:`benchmarks.stalls_worker`): a
fresh engine in a temporary folder, a loop of 3 own actions (``reward_wait=5``), ``rank()`` at
a fixed rate (``--rate``, open loop: call ``i`` is due at ``start + i / rate``) with 10
per-call actions drawn from 5,000 SKU ids with prices from 2,000 values, and one call in 5
rewarded 0-2 s later, so that the learner trains, saves snapshots and logs decisions while
ranks go on. At the start, a warm store holding the vectors of every text of the load is made
once (7,016 texts: about a minute on this project's host); each run starts from a copy of it,
and its untimed warm-up loads the model, reads those vectors, ranks once with each value, lets
those decisions be learned and the embedder's queue run empty: the timed part is the steady
state, not first-time embeddings. The first ``--skip`` seconds of it are left out of the
statistics (start-up transients).

Reported per run: ranks counted, p50 / p99 / p99.9 / max (ms), ranks over 30 and 100 ms, the
rank rate achieved, samples learned and the model version, the garbage collections per
generation and the longest of each, and the host's steal time (benchmarks/host.py). Each run
is a process of its own. ``--compare REV`` runs the same measurement with the engine of
revision ``REV`` (a temporary detached ``git worktree``) in turn with this checkout's,
``--pairs`` times, and reports medians per side. ``--watch-ms X`` adds a watchdog that saves
every thread's stack while a rank runs past X ms (off by default: it takes the interpreter lock
itself).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.host import parse_proc_stat, percent, steal_share
from benchmarks.paths import REPO_ROOT, RESULTS_DIR
from benchmarks.stalls_worker import (
    COUNTRIES,
    DEVICES,
    OWN,
    PER_CALL,
    PRICES,
    REWARD_DELAY,
    REWARD_EVERY,
    REWARD_WAIT,
    SEED,
    SKUS,
)
from benchmarks.stats import percentile

WORKER = Path(__file__).resolve().with_name("stalls_worker.py")
DEFAULTS = {"rate": 150.0, "duration": 150.0, "skip": 30.0, "skus": SKUS, "prices": PRICES}
# A smaller catalogue: the warm store's 7,016 texts take about a minute to embed here.
QUICK = {"rate": 50.0, "duration": 6.0, "skip": 1.0, "skus": 500, "prices": 200}
SLOW_MS = (30.0, 100.0)  # ranks over these are counted
THIS = "this checkout"


def parser(prog: str = "python -m benchmarks.stalls") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=None,
                   help=f"rank() calls per second (default {DEFAULTS['rate']:g}, quick "
                        f"{QUICK['rate']:g})")
    p.add_argument("--duration", type=float, default=None,
                   help=f"seconds of the timed part (default {DEFAULTS['duration']:g}, quick "
                        f"{QUICK['duration']:g})")
    p.add_argument("--skip", type=float, default=None,
                   help=f"seconds at its start left out of the statistics (default "
                        f"{DEFAULTS['skip']:g}, quick {QUICK['skip']:g})")
    p.add_argument("--skus", type=int, default=None,
                   help=f"SKU ids the per-call actions are drawn from (default {SKUS}, quick "
                        f"{QUICK['skus']})")
    p.add_argument("--prices", type=int, default=None,
                   help=f"prices they are given (default {PRICES}, quick {QUICK['prices']})")
    p.add_argument("--quick", action="store_true",
                   help="a short run for tests: the quick defaults above")
    p.add_argument("--watch-ms", type=float, default=0.0,
                   help="save every thread's stack while a rank runs past this many ms "
                        "(default 0: off; the watchdog takes the interpreter lock itself)")
    p.add_argument("--compare", metavar="REV", default=None,
                   help="also measure the engine of this git revision (a temporary detached "
                        "git worktree), in turn with this checkout's")
    p.add_argument("--pairs", type=int, default=2,
                   help="with --compare: runs per side, alternating (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar on stderr")
    p.add_argument("--json", type=Path, default=None,
                   help="default: RESULTS_DIR/stalls.json (stalls-quick.json with --quick)")
    p.add_argument("--results-dir", type=Path, default=None, help="default: benchmarks/results")
    return p


def settle(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the rate, duration and skip left unset (quick or full defaults); check them."""
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.rate <= 0 or args.duration <= 0 or not 0 <= args.skip < args.duration:
        raise SystemExit("stalls: --rate and --duration must be positive, --skip in "
                         "[0, duration)")
    if args.skus < PER_CALL or args.prices < 1:
        raise SystemExit(f"stalls: --skus must be at least {PER_CALL}, --prices at least 1")
    if args.pairs < 1:
        raise SystemExit("stalls: --pairs must be at least 1")
    return args


def worker(tree: Path, out: Path, options: Sequence[str]) -> dict[str, Any]:
    """Run this checkout's worker script in a process of its own, importing ``ef_middleware``
    from ``tree`` (first on ``PYTHONPATH``); its results, with the engine it imported checked
    and recorded relative to ``tree``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    subprocess.run([sys.executable, str(WORKER), "--out", str(out), *options], cwd=tree,
                   env=env, check=True)
    raw: dict[str, Any] = json.loads(out.read_text())
    imported = Path(raw.pop("ef_middleware")).resolve()
    if not imported.is_relative_to(tree.resolve() / "ef_middleware"):
        raise RuntimeError(f"the worker imported {imported}, not the engine of {tree}")
    raw["ef_middleware"] = str(imported.relative_to(tree.resolve()))
    return raw


def catalogue(args: argparse.Namespace) -> list[str]:
    return ["--skus", str(args.skus), "--prices", str(args.prices)]


def prepare(args: argparse.Namespace, store: Path, work: Path) -> dict[str, Any]:
    """The warm store, made once by this checkout's engine: every run starts from a copy.
    (An engine that keys its vectors otherwise embeds them in its own warm-up, slower.)"""
    print("making the warm store (every text of the load embedded)", file=sys.stderr,
          flush=True)
    return worker(REPO_ROOT, work / "prepare.json",
                  ["--prepare", "--store", str(store), *catalogue(args)])


def measure(tree: Path, side: str, args: argparse.Namespace, store: Path, work: Path,
            index: int) -> dict[str, Any]:
    """One measurement with the engine of ``tree``: its raw results."""
    options = ["--store", str(store), "--rate", str(args.rate), "--duration",
               str(args.duration), "--skip", str(args.skip), "--watch-ms", str(args.watch_ms),
               "--label", f"run {index + 1} ({side})", *catalogue(args)]
    if not args.no_progress:
        options.append("--progress")
    print(f"run {index + 1}: {side}", file=sys.stderr, flush=True)
    return worker(tree, work / f"raw-{index}.json", options)


def summarise(raw: dict[str, Any], rate: float, skip: float) -> dict[str, Any]:
    """A run's statistics over its ranks that started ``skip`` s or more into the timed part
    (and the collections that started then)."""
    counted = [(i, t, ms) for i, (t, ms) in enumerate(raw["ranks"]) if t >= skip]
    times = sorted(ms for _, _, ms in counted)
    window = raw["elapsed"] - skip
    gcs = [(gen, ms) for gen, start, ms in raw["gc"] if start >= skip]
    before, after = (parse_proc_stat(line) if line else None for line in raw["cpu_stat"])
    stats: dict[str, Any] = {
        "ranks": len(times),
        "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
        "p99_9_ms": percentile(times, 99.9), "max_ms": times[-1] if times else None,
        **{f"over_{limit:g}_ms": sum(ms > limit for ms in times) for limit in SLOW_MS},
        "rate": len(times) / window if window > 0 else None,
        # How late a call started after its due time (open loop: a stall delays the next).
        "max_lag_ms": max(((t - i / rate) * 1000 for i, t, _ in counted), default=None),
        "learned": raw["learned"] - raw["learned_before"], "learned_total": raw["learned"],
        "model_version": raw["model_version"], "decisions": raw["decisions"],
        "gc_counts": [sum(g == gen for g, _ in gcs) for gen in range(3)],
        "gc_longest_ms": [max((ms for g, ms in gcs if g == gen), default=0.0)
                          for gen in range(3)],
        "gc_gen2_ms": [round(ms, 1) for g, ms in gcs if g == 2],
        "steal": steal_share(before, after),
    }
    keep = ("ef_middleware", "warm_up", "elapsed", "rewards_posted", "reward_errors",
            "encoded_during_run", "gc_threshold", "gc_frozen", "model_version_before",
            "health", "close_seconds", "stalls")
    return {**stats, **{k: raw[k] for k in keep}}


COLUMNS = ("run", "engine", "warm-up s", "ranks", "p50 ms", "p99 ms", "p99.9 ms",
           "max ms", ">30 ms", ">100 ms", "ranks/s", "learned", "model version",
           "gc 0/1/2", "longest gc 0/1/2 ms", "steal")
MEDIAN_KEYS = ("ranks", "p50_ms", "p99_ms", "p99_9_ms", "max_ms", "over_30_ms",
               "over_100_ms", "rate", "learned", "model_version", "steal")


def row(name: str, side: str, s: dict[str, Any]) -> list[str]:
    def num(key: str, digits: int = 0) -> str:
        value = s.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    gc_counts = "/".join(str(c) for c in s["gc_counts"]) if "gc_counts" in s else "-"
    gc_longest = ("/".join(f"{ms:.1f}" for ms in s["gc_longest_ms"])
                  if "gc_longest_ms" in s else "-")
    warm = f"{s['warm_up']['seconds']:.0f}" if "warm_up" in s else "-"
    return [name, side, warm, num("ranks"), num("p50_ms", 2), num("p99_ms", 2),
            num("p99_9_ms", 1), num("max_ms", 1), num("over_30_ms"), num("over_100_ms"),
            num("rate", 1), num("learned"), num("model_version"), gc_counts, gc_longest,
            percent(s.get("steal"))]


def one_line(s: dict[str, Any]) -> str:
    """A run's main figures, printed as it ends."""
    return (f"{s['side']}: {s['ranks']} ranks, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f}"
            f" ms, p99.9 {s['p99_9_ms']:.1f} ms, max {s['max_ms']:.1f} ms, "
            f"{s['over_30_ms']} over 30 ms, {s['over_100_ms']} over 100 ms")


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per side, the median of each figure over its runs."""
    out: dict[str, dict[str, float]] = {}
    for side in dict.fromkeys(r["side"] for r in runs):
        mine = [r for r in runs if r["side"] == side]
        out[side] = {key: statistics.median(values) for key in MEDIAN_KEYS
                     if (values := [r[key] for r in mine if r.get(key) is not None])}
    return out


def report(runs: Sequence[dict[str, Any]], per_side: dict[str, dict[str, float]],
           args: argparse.Namespace) -> str:
    from benchmarks.report import table

    rows = [row(str(i + 1), r["side"], r) for i, r in enumerate(runs)]
    if len(runs) > 1:
        rows += [row("median", side, s) for side, s in per_side.items()]
    head = (f"rank() at {args.rate:g}/s for {args.duration:g} s, the first {args.skip:g} s "
            f"left out; {PER_CALL} per-call actions of {args.skus} SKUs, 1 in {REWARD_EVERY} "
            f"rewarded; cores={os.cpu_count()}")
    return head + "\n\n" + table(COLUMNS, rows)


def portable(path: Path) -> str:
    """A path as the JSON may record it: relative to the repository, else its name only."""
    resolved = path.resolve()
    return (str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT)
            else f".../{path.name}")


def command_line(argv: Sequence[str]) -> str:
    """``scripts/bench stalls ...`` with no machine path in it."""
    words = []
    for word in argv:
        option, sep, value = word.partition("=")
        if sep and os.path.isabs(value):
            word = f"{option}={portable(Path(value))}"
        elif os.path.isabs(word):
            word = portable(Path(word))
        words.append(word)
    return " ".join(["scripts/bench stalls", *words])


def output_path(args: argparse.Namespace) -> Path:
    if args.json is not None:
        return Path(args.json)
    return (args.results_dir or RESULTS_DIR) / ("stalls-quick.json" if args.quick
                                                 else "stalls.json")


def load(args: argparse.Namespace) -> dict[str, Any]:
    """The load, as the JSON records it."""
    return {"own_actions": len(OWN), "reward_wait_s": REWARD_WAIT, "per_call_actions": PER_CALL,
            "sku_ids": args.skus, "prices": args.prices, "devices": len(DEVICES),
            "countries": len(COUNTRIES), "rewarded": f"1 in {REWARD_EVERY}, 1.0, 0-"
            f"{REWARD_DELAY:g} s after the rank", "seed": SEED}


def revision(rev: str) -> str | None:
    out = subprocess.run(["git", "rev-parse", "--short", f"{rev}^{{commit}}"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks.stalls") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = settle(parser(prog).parse_args(argv))
    path = output_path(args)
    if path.suffix != ".json":  # checked before the runs, not after them
        raise SystemExit(f"stalls: --json must name a .json file, not {path.name}")
    from benchmarks.report import write_json  # records the engine's source digest now

    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ef-stalls-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        store = work / "warm-store"
        warm_store = prepare(args, store, work)
        sides = [(THIS, REPO_ROOT)]
        if args.compare:
            from benchmarks.web_throughput import checkout

            sides.append((f"@{args.compare}", stack.enter_context(checkout(args.compare, work))))
        for _ in range(args.pairs if args.compare else 1):
            for side, tree in sides:
                raw = measure(tree, side, args, store, work, len(runs))
                runs.append({"side": side, **summarise(raw, args.rate, args.skip)})
                print(one_line(runs[-1]), file=sys.stderr, flush=True)
    per_side = medians(runs)
    print(report(runs, per_side, args))
    path = output_path(args)
    written = write_json(path.stem, {
        "command": command_line(argv),
        "args": {k: (portable(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load": load(args), "warm_store": warm_store,
        "compare": ({"revision": args.compare, "commit": revision(args.compare)}
                    if args.compare else None),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "medians": per_side, "runs": runs}, path.parent)
    inside = written.resolve().is_relative_to(REPO_ROOT)
    print(f"wrote {portable(written) if inside else written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
