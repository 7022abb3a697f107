"""Speed measurements of one peer, run in its own process so its peak RSS is its own.

``python -m benchmarks.speed_worker engine|vw --ks 10,100,1000 --calls 1000`` prints one JSON
object on stdout: per K the rank/predict latency (warm caches, and with one unseen feature value
per call), the reward-to-learned throughput, setup time, and the process's peak RSS; the
engine's also the bare numpy forward of its network (``bare_forward``).

``python -m benchmarks.speed_worker engine --sustained 3000 --seconds 8`` instead sends rewards
at a fixed rate to the learner thread (K = 10), once with the loop's ``replay_backlog`` and once
without it (the full replay ratio however many wait), and reports whether the learner kept up.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from benchmarks.problems.websim import _Sampler, sample_visitor
from benchmarks.stats import percentile
from ef_middleware.settings import LoopSettings

LAYOUTS = ("minimal", "detailed", "video", "testimonial")
WARMUP = 256


def actions(k: int) -> list[dict[str, Any]]:
    """K hero variants with distinct text features."""
    return [
        {"id": f"v{i}", "features": {"layout": LAYOUTS[i % 4], "cta": f"Call to action {i}"}}
        for i in range(k)
    ]


def visitors(n: int, seed: int = 0) -> list[dict[str, Any]]:
    sampler = _Sampler(np.random.default_rng([seed, 7]))
    return [sample_visitor(sampler, 0) for _ in range(n)]


def latency(call: Callable[[int], object], calls: int) -> dict[str, float]:
    """Per-call wall time in microseconds: p50, p99, mean over ``calls`` calls."""
    times: list[float] = []
    for i in range(calls):
        t0 = time.perf_counter_ns()
        call(i)
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    times.sort()
    return {
        "p50_us": percentile(times, 50),
        "p99_us": percentile(times, 99),
        "mean_us": sum(times) / len(times),
        "calls": float(calls),
    }


def new_context(context: dict[str, Any], i: int) -> dict[str, Any]:
    """The context at a fractional hour no other call uses: every value embedded already,
    but a context the engine's per-model view cache has not seen (a full forward pass)."""
    return {**context, "hour": (i * 0.618034) % 24.0}


def unseen(context: dict[str, Any], i: int) -> dict[str, Any]:
    """The context with a never-seen campaign string (a fresh text to embed)."""
    return {**context, "utm_campaign": f"spring-campaign-{i}-{time.perf_counter_ns()}"}


@contextlib.contextmanager
def warm_loop(name: str, k: int, pool: list[dict[str, Any]], seed: int,
              **settings: Any) -> Iterator[tuple[Any, float]]:
    """A loop of K actions in a fresh engine, warmed up (every context of ``pool`` embedded,
    the model trained a little), and the seconds ``engine.loop`` took; closed afterwards."""
    from benchmarks.agents.engine import DEFAULT_STRATEGY, make_engine

    folder = tempfile.mkdtemp(prefix="ef-speed-")
    engine = make_engine(folder, seed)
    try:
        t0 = time.perf_counter()
        loop = engine.loop(name, actions=actions(k), strategy=DEFAULT_STRATEGY, **settings)
        setup = time.perf_counter() - t0
        for c in pool:
            loop.reward(loop.rank(c).event_id, 1.0 if c["device"] == "mobile" else 0.0)
        loop.flush()
        yield loop, setup
    finally:
        engine.close()
        shutil.rmtree(folder, ignore_errors=True)


def bare_forward(k: int, text_dim: int, numeric_dim: int, hidden: Sequence[int],
                 calls: int, seed: int) -> dict[str, float]:
    """The floor under the engine's full forward pass: the same network in plain numpy
    (float32, random weights, the action half of layer 1 precomputed), a new context vector
    each call, and nothing else (no features, policy, logging). Run in the engine's process,
    right after its ``rank_new_context``, so both see the same BLAS set-up and host."""
    rng = np.random.default_rng(seed)

    def dense(n_in: int, n_out: int) -> tuple[Any, Any]:
        w = rng.standard_normal((n_in, n_out)).astype(np.float32) * np.float32(
            np.sqrt(2.0 / (n_in + n_out)))
        return w, np.zeros(n_out, np.float32)

    w_context, b1 = dense(text_dim + numeric_dim, hidden[0])
    rows = rng.standard_normal((k, hidden[0])).astype(np.float32)  # the actions' halves
    layers = [dense(a, b) for a, b in itertools.pairwise(hidden)]
    w_out, b_out = dense(hidden[-1], 1)
    contexts = rng.standard_normal((64, text_dim + numeric_dim)).astype(np.float32)

    def forward(i: int) -> Any:
        h = np.maximum(rows + (contexts[i % 64] @ w_context + b1), 0.0)
        for w, b in layers:
            h = np.maximum(h @ w + b, 0.0)
        return 1.0 / (1.0 + np.exp(-(h @ w_out[:, 0] + b_out[0])))

    return latency(forward, calls)


def engine_k(k: int, calls: int, pool: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    with warm_loop(f"speed-{k}", k, pool, seed) as (loop, setup):
        n = len(pool)
        warm = latency(lambda i: loop.rank(pool[i % n]), calls)
        forward = latency(lambda i: loop.rank(new_context(pool[i % n], i)), calls)
        cfg = loop.trainer.net.config
        floor = bare_forward(k, cfg.text_dim, cfg.numeric_dim, cfg.hidden, calls, seed)
        fresh = latency(lambda i: loop.rank(unseen(pool[i % n], i)), calls)
        events = [loop.rank(pool[i % n]).event_id for i in range(calls)]
        loop.learn_pending()  # log the decisions now: the timed part is rewards to learned
        steps = loop.trainer.net.step
        t0 = time.perf_counter()
        for i, event in enumerate(events):
            loop.reward(event, float(i % 2))
        enqueued = time.perf_counter() - t0
        loop.flush()
        learned = time.perf_counter() - t0
        # the replay ratio these rewards were learned at (boosted while the network predicted
        # the warm-up's rewards well: see LoopSettings.replay_boost)
        ratio = (loop.trainer.net.step - steps) * loop.settings.batch_size / calls
    return {
        "setup_s": setup,
        "rank": warm,
        "rank_new_context": forward,
        "bare_forward": floor,
        "rank_unseen": fresh,
        "learn": {"n": calls, "per_s": calls / learned, "enqueue_per_s": calls / enqueued,
                  "replay_ratio": ratio},
    }


def vw_k(k: int, calls: int, pool: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    import vowpalwabbit

    from benchmarks.agents.vw import DEFAULT_ARGS, action_lines, vw_features

    t0 = time.perf_counter()
    vw = vowpalwabbit.Workspace(f"{DEFAULT_ARGS} --random_seed {seed}")
    lines = action_lines([a["features"] for a in actions(k)])
    setup = time.perf_counter() - t0
    rng = np.random.default_rng(seed)

    def predict(c: dict[str, Any]) -> list[float]:
        return list(vw.predict([f"shared |U {vw_features(c)}", *lines]))

    def learn(c: dict[str, Any], reward: float, i: int) -> None:
        arm = i % k
        labelled = [*lines]
        labelled[arm] = f"{arm}:{-reward:.3g}:{1.0 / k:.6g} {lines[arm]}"
        vw.learn([f"shared |U {vw_features(c)}", *labelled])

    try:
        for i, c in enumerate(pool):
            pmf = predict(c)
            rng.choice(k, p=np.asarray(pmf) / sum(pmf))
            learn(c, 1.0 if c["device"] == "mobile" else 0.0, i)
        n = len(pool)
        warm = latency(lambda i: predict(pool[i % n]), calls)
        forward = latency(lambda i: predict(new_context(pool[i % n], i)), calls)
        fresh = latency(lambda i: predict(unseen(pool[i % n], i)), calls)
        t0 = time.perf_counter()
        for i in range(calls):
            learn(pool[i % n], float(i % 2), i)
        learned = time.perf_counter() - t0
    finally:
        vw.finish()
    return {
        "setup_s": setup,
        "rank": warm,
        "rank_new_context": forward,
        "rank_unseen": fresh,
        "learn": {"n": calls, "per_s": calls / learned, "enqueue_per_s": calls / learned},
    }


def sustained(rate: float, seconds: float, pool: list[dict[str, Any]], seed: int,
              backlog: int | None) -> dict[str, Any]:
    """Rewards sent to the learner thread at ``rate`` per second for ``seconds`` (open loop:
    reward *i* is due at *start + i / rate*), K = 10, with ``replay_backlog=backlog``."""
    waiting: list[int] = []
    with warm_loop("sustained", 10, pool, seed, replay_backlog=backlog) as (loop, _):
        n, m = int(rate * seconds), len(pool)
        events = [loop.rank(pool[i % m]).event_id for i in range(n)]
        loop.learn_pending()
        steps, learned = loop.trainer.net.step, loop.learned
        done = threading.Event()

        def watch() -> None:  # samples handed to learning and not learned yet, every 0.1 s
            while not done.wait(0.1):
                waiting.append(loop.enqueued - loop.learned)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        for i, event in enumerate(events):
            ahead = t0 + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            loop.reward(event, float(i % 2))
        fed = time.perf_counter() - t0
        learned_in_feed = loop.learned - learned
        behind = loop.enqueued - loop.learned
        loop.flush()
        total = time.perf_counter() - t0
        done.set()
        watcher.join()
        visits = (loop.trainer.net.step - steps) * loop.settings.batch_size
    return {
        "replay_backlog": backlog,
        "rewards": n,
        "offered_per_s": n / fed,
        "learned_per_s_while_fed": learned_in_feed / fed,
        "waiting_at_end": behind,
        "waiting_max": max(waiting, default=behind),
        "catch_up_s": total - fed,
        "learned_per_s": n / total,
        "replay_ratio": visits / n,
    }


def startup(peer: str, seed: int) -> float:
    """Seconds to a first decision on a fresh engine (model load) or VW workspace."""
    t0 = time.perf_counter()
    if peer == "vw":
        import vowpalwabbit

        vw = vowpalwabbit.Workspace(f"--cb_explore_adf --quiet --random_seed {seed}")
        vw.predict(["shared |U a=1", "|A b=1", "|A b=2"])
        vw.finish()
        return time.perf_counter() - t0
    from benchmarks.agents.engine import make_engine

    folder = tempfile.mkdtemp(prefix="ef-speed-")
    engine = make_engine(folder, seed)
    try:
        engine.loop("startup", actions=actions(2)).rank({"device": "mobile"})
    finally:
        engine.close()
        shutil.rmtree(folder, ignore_errors=True)
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed_worker")
    p.add_argument("peer", choices=("engine", "vw"))
    p.add_argument("--ks", default="10,100,1000")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sustained", type=float, default=0.0,
                   help="rewards per second sent to the learner thread (engine, K = 10)")
    p.add_argument("--seconds", type=float, default=8.0, help="how long --sustained sends")
    p.add_argument("--repeat", action="store_true",
                   help="--sustained: each setting twice (A B B A), not once")
    args = p.parse_args(argv)
    if args.sustained:
        pool = visitors(WARMUP, args.seed)
        shed = LoopSettings().replay_backlog
        # Both settings twice, in the order A B B A: the host's speed drifts within minutes.
        runs = [sustained(args.sustained, args.seconds, pool, args.seed, backlog)
                for backlog in (None, shed, shed, None)[: 4 if args.repeat else 2]]
        json.dump({"peer": "engine", "sustained": runs}, sys.stdout)
        return 0
    measure = engine_k if args.peer == "engine" else vw_k
    pool = visitors(WARMUP, args.seed)
    out: dict[str, Any] = {"peer": args.peer, "calls": args.calls, "by_k": {}}
    start = time.perf_counter()
    out["startup_s"] = startup(args.peer, args.seed)
    for k in (int(x) for x in args.ks.split(",")):
        out["by_k"][str(k)] = measure(k, args.calls, pool, args.seed)
    out["seconds"] = time.perf_counter() - start
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_rss_mb"] = rss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
