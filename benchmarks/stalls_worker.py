"""One measurement of ``scripts/bench stalls`` (:mod:`benchmarks.stalls`), in a process of its own.

Run as a script file, ``python benchmarks/stalls_worker.py --out raw.json [...]``, with
``PYTHONPATH`` set to the checkout whose engine is measured. It imports nothing of a checkout
but ``ef_middleware`` (besides the standard library, and tqdm for progress), so that an older
revision's tree, which may not have this file, is measured by this file's code: only its
engine differs. It prints the ``ef_middleware`` it imported on stderr and writes the raw
timings to ``--out``; :mod:`benchmarks.stalls` computes the statistics.

The load is the lab driver's of the twenty-seventh stop (``driver2.py``, whose runs the
earlier figures in docs/benchmarks.md come from): a loop of 3 own actions, ``rank()`` at a
fixed rate with 10 per-call actions drawn from 5,000 SKU ids with prices from 2,000 values,
one call in 5 rewarded 0-2 s later, the same seeds.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import importlib
import json
import math
import random
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ef_middleware import EmbeddingCache, Engine, Loop

SEED = 27  # driver2.py's random.Random(27): the same calls, in the same order
SKUS, PRICES = 5000, 2000  # the catalogue's SKU ids and prices (driver2.py's)
DEVICES = ("mobile", "desktop", "tablet")
COUNTRIES = ("us", "uk", "de", "fr", "es", "it", "nl", "se", "pl", "jp")
PER_CALL = 10  # per-call actions of a rank
REWARD_EVERY = 5  # one call in 5 is rewarded (1.0) ...
REWARD_DELAY = 2.0  # ... 0 to 2 s after its rank
REWARD_WAIT = 5  # the loop's reward_wait: the other decisions are learned 5 s after their rank
ENCODE_CHUNK = 256  # texts per blocking encode in the warm-up
SNAPSHOTS_PER_STALL = 60

clock = time.perf_counter

Context = dict[str, Any]
Actions = list[dict[str, Any]]

OWN: Actions = [{"id": f"p{i}", "features": {"price": "$9.99"}} for i in range(3)]


class Catalogue:
    """The load's values: SKU ids, prices, devices and countries."""

    def __init__(self, skus: int = SKUS, prices: int = PRICES) -> None:
        self.ids = [f"sku-{i:05d}" for i in range(skus)]
        self.prices = [f"${4.99 + 0.25 * i:.2f}" for i in range(prices)]

    def texts(self) -> list[str]:
        """Every text the load embeds, in the engine's ``"key: value"`` form (features.py);
        one it would spell otherwise is embedded by the warm-up's ranks instead, only slower."""
        ids = [str(a["id"]) for a in OWN] + self.ids
        own_prices = [str(a["features"]["price"]) for a in OWN]
        prices = list(dict.fromkeys(own_prices + self.prices))
        return ([f"variant: {i}" for i in ids] + [f"price: {p}" for p in prices]
                + [f"device: {d}" for d in DEVICES] + [f"country: {c}" for c in COUNTRIES])

    def every_value(self) -> Iterator[tuple[Context, Actions]]:
        """Calls that between them use every device, country, SKU id and price at least
        once (the warm-up's; no draw from :class:`Traffic`'s generator)."""
        ids, prices = self.ids, self.prices
        for i in range(math.ceil(max(len(ids), len(prices)) / PER_CALL)):
            context = {"device": DEVICES[i % len(DEVICES)],
                       "country": COUNTRIES[i % len(COUNTRIES)], "hour": i % 24}
            actions = [{"id": ids[j % len(ids)], "features": {"price": prices[j % len(prices)]}}
                       for j in range(i * PER_CALL, (i + 1) * PER_CALL)]
            yield context, actions


class Traffic:
    """driver2.py's calls: its draws from ``random.Random(27)``, in its order."""

    def __init__(self, catalogue: Catalogue, seed: int = SEED) -> None:
        self.catalogue = catalogue
        self.rng = random.Random(seed)

    def call(self) -> tuple[Context, Actions]:
        rng, prices = self.rng, self.catalogue.prices
        context = {"device": rng.choice(DEVICES), "country": rng.choice(COUNTRIES),
                   "hour": rng.randrange(24)}
        actions = [{"id": pid, "features": {"price": rng.choice(prices)}}
                   for pid in rng.sample(self.catalogue.ids, PER_CALL)]
        return context, actions

    def reward_delay(self) -> float:
        return self.rng.uniform(0, REWARD_DELAY)


def embed(cache: EmbeddingCache, texts: list[str]) -> None:
    """Load the model (as driver2.py did) and have every text's vector, in memory and in the
    store: read from the store when there, else encoded on this thread (blocking)."""
    cache.embedder.encode(["warm: up"])
    for first in range(0, len(texts), ENCODE_CHUNK):
        cache.get_many(texts[first:first + ENCODE_CHUNK], block=True)


def prepare(folder: Path, catalogue: Catalogue) -> dict[str, Any]:
    """The warm store every run starts from a copy of: the vectors of every text of the
    load (7,016 texts: about a minute on this project's host)."""
    from ef_middleware import Engine

    start = clock()
    engine = Engine(folder)
    try:
        embed(engine.embeddings, catalogue.texts())
        encoded = getattr(engine.embeddings, "misses", None)
    finally:
        engine.close()
    return {"seconds": clock() - start, "texts": len(catalogue.texts()), "encoded": encoded}


def warm_up(engine: Engine, loop: Loop, catalogue: Catalogue, start: float) -> dict[str, Any]:
    """Load the model, have every text of the load embedded (from the warm store), rank once
    with each value, let those decisions be learned and the embedder's queue run empty: the
    timed part then measures the steady state, not first-time embeddings."""
    cache = engine.embeddings
    encoded = getattr(cache, "misses", 0)
    embed(cache, catalogue.texts())
    ranks = 0
    for context, actions in catalogue.every_value():
        loop.rank(context, actions=actions)
        ranks += 1
    time.sleep(REWARD_WAIT + 0.5)  # their wait is over: flush() learns them
    loop.flush(timeout=600)
    if not cache.wait(timeout=600):
        raise RuntimeError("the embedder's queue did not run empty within 600 s")
    queue = engine.health()["embedding_queue"]
    if queue:
        raise RuntimeError(f"{queue} texts still wait for the embedder after the warm-up")
    return {"seconds": clock() - start, "ranks": ranks,
            "encoded": getattr(cache, "misses", 0) - encoded}


class GcTimer:
    """Every garbage collection while installed, in any thread (``gc.callbacks``):
    ``(generation, start in s from origin, duration in ms)``."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.events: list[tuple[int, float, float]] = []
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        ident = threading.get_ident()
        if phase == "start":
            self._started[ident] = clock()
            return
        began = self._started.pop(ident, None)
        if began is not None:
            self.events.append((int(info["generation"]), began - self.origin,
                                (clock() - began) * 1000))

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class Watchdog(threading.Thread):
    """While a rank runs past ``limit_ms``: a snapshot of every thread's stack every ~3 ms
    (at most 60 per stall) with its time into the rank; gaps between snapshots mean the
    watchdog could not get the interpreter lock. It takes that lock itself, so it is off
    unless asked for."""

    def __init__(self, limit_ms: float, origin: float) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.limit = limit_ms / 1000
        self.origin = origin
        self.call = 0
        self.started = 0.0  # the running rank's start (perf_counter); 0: none runs
        self.stalls: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        record: dict[str, Any] | None = None
        while not self.halt.wait(0.003):
            call, started = self.call, self.started
            now = clock()
            if not started or now - started <= self.limit:
                continue
            if record is None or record["call"] != call:
                record = {"call": call, "at": started - self.origin, "snaps": []}
                self.stalls.append(record)
            if len(record["snaps"]) < SNAPSHOTS_PER_STALL:
                record["snaps"].append({"ms": (now - started) * 1000, "stacks": stacks()})


def stacks(depth: int = 8) -> dict[str, str]:
    """The innermost ``depth`` frames of every thread but the watchdog, by thread name."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out: dict[str, str] = {}
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, str(ident))
        if name != "watchdog":
            out[name] = "".join(traceback.format_stack(frame)[-depth:])
    return out


def cpu_line() -> str | None:
    """The ``cpu`` line of ``/proc/stat`` (the host's steal time: benchmarks/host.py)."""
    try:
        with open("/proc/stat") as f:
            return f.readline()
    except OSError:
        return None


def progress_bar(total: int, enabled: bool, label: str) -> Callable[[], None]:
    """A step of a tqdm bar on stderr (a no-op when off or without tqdm)."""
    if not enabled:
        return lambda: None
    try:
        tqdm: Any = importlib.import_module("tqdm").tqdm  # (no type stubs here)
    except ImportError:
        return lambda: None
    tqdm.monitor_interval = 0  # no monitor thread of its own beside the engine's
    bar = tqdm(total=total, desc=label, unit="rank", file=sys.stderr, mininterval=1.0,
               leave=False)
    return lambda: bar.update(1)


def drive(loop: Loop, args: argparse.Namespace, watchdog: Watchdog | None,
          start: float) -> dict[str, Any]:
    """The timed part: call ``i`` is due at ``start + i / rate`` (open loop: a late call is
    not skipped, the next ones are not pushed back); the rewards due are posted between
    calls, on this thread, untimed."""
    traffic = Traffic(Catalogue(args.skus, args.prices))
    calls = math.ceil(args.duration * args.rate)
    tick = progress_bar(calls, args.progress, args.label)
    ranks: list[tuple[float, float]] = []
    rewards: list[tuple[float, str]] = []
    errors = posted = 0
    steal_from: str | None = None
    for n in range(calls):
        due = start + n / args.rate
        now = clock()
        while rewards and rewards[0][0] <= now:
            _, event = heapq.heappop(rewards)
            try:
                loop.reward(event, 1.0)
                posted += 1
            except Exception:
                errors += 1
            now = clock()
        if due > now:
            time.sleep(due - now)
        if steal_from is None and n / args.rate >= args.skip:
            steal_from = cpu_line()
        context, actions = traffic.call()
        began = clock()
        if watchdog is not None:
            watchdog.call, watchdog.started = n + 1, began
        decision = loop.rank(context, actions=actions)
        ended = clock()
        if watchdog is not None:
            watchdog.started = 0.0
        ranks.append((began - start, (ended - began) * 1000))
        if (n + 1) % REWARD_EVERY == 0:
            heapq.heappush(rewards, (ended + traffic.reward_delay(), decision.event_id))
        tick()
    return {"elapsed": clock() - start, "ranks": ranks, "rewards_posted": posted,
            "reward_errors": errors, "cpu_stat": [steal_from, cpu_line()]}


def portable(text: str, roots: Sequence[Path]) -> str:
    """``text`` (a stack) without this machine's folders: the checkouts' roots dropped, the
    interpreter's libraries as ``site-packages/`` and ``stdlib/``."""
    paths = sysconfig.get_paths()
    prefixes = [(paths["purelib"], "site-packages"), (paths["platlib"], "site-packages"),
                (paths["stdlib"], "stdlib"), (paths["platstdlib"], "stdlib"),
                *((str(r), "") for r in roots)]
    for prefix, label in sorted(prefixes, key=lambda p: -len(p[0])):
        text = text.replace(prefix.rstrip("/") + "/", f"{label}/" if label else "")
    return text


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """``--prepare``: the warm store. Else one measurement: a fresh engine on a copy of the
    warm store, its warm-up, the timed part; the raw results."""
    import ef_middleware
    from ef_middleware import Engine

    print(f"ef_middleware: {ef_middleware.__file__}", file=sys.stderr, flush=True)
    catalogue = Catalogue(args.skus, args.prices)
    if args.prepare:
        made = prepare(args.store, catalogue)
        print(f"warm store: {made['seconds']:.1f} s ({made['texts']} texts)", file=sys.stderr,
              flush=True)
        return {**made, "ef_middleware": ef_middleware.__file__}
    with tempfile.TemporaryDirectory(prefix="ef-stalls-") as folder:
        store = Path(folder) / "store"
        if args.store is not None:
            shutil.copytree(args.store, store)
        began = clock()
        engine = Engine(store)
        try:
            loop = engine.loop("catalogue", actions=OWN, reward_wait=REWARD_WAIT)
            warm = warm_up(engine, loop, catalogue, began)
            print(f"warm-up: {warm['seconds']:.1f} s ({warm['encoded']} texts encoded, "
                  f"{warm['ranks']} ranks)", file=sys.stderr, flush=True)
            result = timed(engine, loop, args)
            result["warm_up"] = warm
        finally:
            closing = clock()
            engine.close()
    result["close_seconds"] = clock() - closing
    roots = [Path(ef_middleware.__file__).resolve().parents[1], Path(__file__).resolve().parents[1]]
    result["stalls"] = [{**s, "snaps": [{**snap, "stacks": {k: portable(v, roots)
                                                            for k, v in snap["stacks"].items()}}
                                        for snap in s["snaps"]]} for s in result["stalls"]]
    result["ef_middleware"] = ef_middleware.__file__
    return result


def timed(engine: Engine, loop: Loop, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`drive`, with the collections timed and the watchdog on if asked for; the
    engine's counters before and after."""
    learned, version = loop.learned, loop.model_version
    encoded = getattr(engine.embeddings, "misses", None)
    start = clock()
    watchdog = Watchdog(args.watch_ms, start) if args.watch_ms > 0 else None
    if watchdog is not None:
        watchdog.start()
    try:
        with GcTimer(start) as gcs:
            run = drive(loop, args, watchdog, start)
    finally:
        if watchdog is not None:
            watchdog.halt.set()
            watchdog.join()
    now_encoded = getattr(engine.embeddings, "misses", None)
    return {
        **run, "gc": gcs.events, "gc_threshold": gc.get_threshold(),
        "gc_frozen": gc.get_freeze_count(), "learned_before": learned,
        "learned": loop.learned, "decisions": loop.decisions,
        "model_version_before": version, "model_version": loop.model_version,
        "health": engine.health(), "stalls": [] if watchdog is None else watchdog.stalls,
        # Texts that ran the transformer during the timed part (0: the warm-up did its job).
        "encoded_during_run": (None if encoded is None or now_encoded is None
                               else now_encoded - encoded),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stalls_worker.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="raw results (JSON)")
    p.add_argument("--rate", type=float, default=150.0, help="rank() calls per second")
    p.add_argument("--duration", type=float, default=150.0, help="seconds of the timed part")
    p.add_argument("--skip", type=float, default=30.0,
                   help="seconds left out of the statistics (here: of the steal time)")
    p.add_argument("--watch-ms", type=float, default=0.0,
                   help="snapshot every thread's stack while a rank runs past this (0: off)")
    p.add_argument("--skus", type=int, default=SKUS, help="SKU ids of the catalogue")
    p.add_argument("--prices", type=int, default=PRICES, help="prices of the catalogue")
    p.add_argument("--store", type=Path, default=None,
                   help="the warm store: a run starts from a copy of it")
    p.add_argument("--prepare", action="store_true",
                   help="make the warm store in --store (embed every text of the load), "
                        "and nothing else")
    p.add_argument("--progress", action="store_true", help="a tqdm bar on stderr")
    p.add_argument("--label", default="stalls", help="the progress bar's label")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        # Run as a script: benchmarks/ heads the path, and its modules (stats, data, ...)
        # must not stand in for others of the same name.
        del sys.path[0]
    args = parser().parse_args(argv)
    result = measure(args)
    args.out.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
