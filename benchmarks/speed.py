"""Speed benchmark: the engine against Vowpal Wabbit, each in its own subprocess.

Latencies are per call with warm caches (after a warm-up of 256 visitors ranked and rewarded),
p50 and p99 of ``time.perf_counter_ns`` deltas. "unseen" puts a never-seen campaign string in
every context (the engine must embed it). Throughput: the engine ranks N visitors, then times N
``loop.reward`` calls plus ``loop.flush()``; VW times N ``learn`` calls. Ratios are engine / VW.
The engine's worker also times the bare numpy forward of the same network (the floor under a
rank on this host) and the table gives rank / bare.
``--sustained RATE``: rewards sent to the engine's learner thread at that rate (K = 10), with and
without ``replay_backlog``, and how far behind the learner fell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from typing import Any

from benchmarks.agents.engine import DEFAULT_STRATEGY, engine_unavailable
from benchmarks.host import cpu_ticks, percent, steal_share
from benchmarks.paths import REPO_ROOT
from benchmarks.report import table, write_json


def _worker(peer: str, ks: str, calls: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.speed_worker", peer, "--ks", ks, "--calls", str(calls),
           *extra]
    print(f"[bench] speed: {peer} (K={ks}, {calls} calls{' '.join(('', *extra))})...",
          file=sys.stderr)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"speed worker {peer} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a and b else "-"


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.3f}"


def speed_table(engine: dict[str, Any] | None, vw: dict[str, Any]) -> str:
    headers = [
        "measure",
        "K",
        "engine p50 ms",
        "engine p99 ms",
        "VW p50 ms",
        "VW p99 ms",
        "engine/VW p50",
        "engine/VW p99",
    ]
    rows: list[list[str]] = []
    for key, label in (("rank", "rank, warm (contexts repeat)"),
                       ("rank_new_context", "rank, warm, new context"),
                       ("rank_unseen", "rank, 1 unseen value")):
        for k, v in vw["by_k"].items():
            e = engine["by_k"].get(k, {}).get(key) if engine else None
            w = v.get(key)
            if w is None:  # results from before the measure existed
                continue
            rows.append(
                [
                    label,
                    k,
                    _ms(e and e["p50_us"]),
                    _ms(e and e["p99_us"]),
                    _ms(w["p50_us"]),
                    _ms(w["p99_us"]),
                    _ratio(e and e["p50_us"], w["p50_us"]),
                    _ratio(e and e["p99_us"], w["p99_us"]),
                ]
            )
    text = table(headers, rows)
    floor = floor_table(engine)
    if floor:
        text += "\n\n" + floor
    headers2 = ["measure", "K", "engine", "VW", "engine/VW"]
    rows2: list[list[str]] = []
    for k, v in vw["by_k"].items():
        e = engine["by_k"].get(k, {}).get("learn") if engine else None
        rows2.append(
            [
                "rewards learned /s (reward+flush vs VW learn)" if not e else
                f"rewards learned /s (reward+flush at replay ratio "
                f"{e.get('replay_ratio', float('nan')):.1f} vs VW learn)",
                k,
                f"{e['per_s']:.0f}" if e else "-",
                f"{v['learn']['per_s']:.0f}",
                _ratio(e and e["per_s"], v["learn"]["per_s"]),
            ]
        )
    eng = engine or {}
    rows2.append(
        [
            "peak RSS MB (own process)",
            "all",
            f"{eng['peak_rss_mb']:.0f}" if eng else "-",
            f"{vw['peak_rss_mb']:.0f}",
            _ratio(eng.get("peak_rss_mb"), vw["peak_rss_mb"]),
        ]
    )
    rows2.append(
        [
            "startup to first decision, s",
            "-",
            f"{eng['startup_s']:.2f}" if eng else "-",
            f"{vw['startup_s']:.3f}",
            _ratio(eng.get("startup_s"), vw["startup_s"]),
        ]
    )
    for k, v in vw["by_k"].items():
        e = eng.get("by_k", {}).get(k)
        rows2.append(
            [
                "create loop / action lines, s",
                k,
                f"{e['setup_s']:.3f}" if e else "-",
                f"{v['setup_s']:.4f}",
                _ratio(e and e["setup_s"], v["setup_s"]),
            ]
        )
    return text + "\n\n" + table(headers2, rows2)


def floor_table(engine: dict[str, Any] | None) -> str:
    """The engine's full forward pass (a new context each call) against the bare numpy
    forward of the same network in the same process: how much of the rank's time is the
    network's arithmetic on this host, which no ranking code can go below on one thread."""
    rows = [[k, _ms(e["rank_new_context"]["p50_us"]), _ms(e["rank_new_context"]["p99_us"]),
             _ms(e["bare_forward"]["p50_us"]), _ms(e["bare_forward"]["p99_us"]),
             f'{e["rank_new_context"]["p50_us"] / e["bare_forward"]["p50_us"]:.2f}x',
             f'{e["rank_new_context"]["p99_us"] / e["bare_forward"]["p99_us"]:.2f}x']
            for k, e in (engine or {}).get("by_k", {}).items() if "bare_forward" in e]
    if not rows:  # results from before the measure existed
        return ""
    headers = ["K", "rank, new context p50 ms", "p99 ms", "bare forward p50 ms", "p99 ms",
               "rank/bare p50", "rank/bare p99"]
    return table(headers, rows)


def sustained_table(runs: list[dict[str, Any]]) -> str:
    """The learner under a steady reward rate, with and without shedding replay."""
    headers = ["replay_backlog", "sent/s", "learned/s while sent", "waiting at the end (max)",
               "catch-up, s", "learned/s overall", "visits per reward"]
    rows = [[str(r["replay_backlog"]), f"{r['offered_per_s']:,.0f}",
             f"{r['learned_per_s_while_fed']:,.0f}",
             f"{r['waiting_at_end']:,} ({r['waiting_max']:,})", f"{r['catch_up_s']:.2f}",
             f"{r['learned_per_s']:,.0f}", f"{r['replay_ratio']:.2f}"] for r in runs]
    return table(headers, rows)


def run_speed(args: Namespace) -> dict[str, Any]:
    calls = args.calls or (200 if args.quick else 1000)
    start = time.perf_counter()
    ticks = cpu_ticks()
    vw = _worker("vw", args.ks, calls)
    reason = engine_unavailable() if args.strategies else "engine disabled (--strategies none)"
    engine = _worker("engine", args.ks, calls) if reason is None else None
    if reason:
        print(f"[bench] speed: engine skipped ({reason})", file=sys.stderr)
    rate = args.sustained
    sustained, seconds = None, (4.0 if args.quick else 8.0)
    if engine is not None and rate > 0:
        extra = ("--sustained", str(rate), "--seconds", str(seconds))
        sustained = _worker("engine", "10", calls,
                            extra if args.quick else (*extra, "--repeat"))["sustained"]
    wall = time.perf_counter() - start
    steal = steal_share(ticks, cpu_ticks())
    text = speed_table(engine, vw)
    if sustained:
        text += (f"\n\nThe learner thread (K = 10) while rewards come at {rate:,.0f}/s for "
                 f"{seconds:.0f} s:\n\n{sustained_table(sustained)}")
    print(f"\n## speed: {calls} timed calls per cell; wall {wall:.0f}s; the host's steal "
          f"time {percent(steal)} of CPU time\n\n{text}\n")
    payload = {
        "config": {
            "quick": args.quick,
            "ks": args.ks,
            "calls": calls,
            "engine_strategy": DEFAULT_STRATEGY,
            "sustained_rate": rate,
        },
        "wall_seconds": wall,
        "steal_share": steal,
        "engine": engine,
        "vw": vw,
        "sustained": sustained,
        "table": text,
    }
    path = write_json("speed" + ("-quick" if args.quick else ""), payload, args.results_dir)
    print(f"[bench] wrote {path}", file=sys.stderr)
    return payload
