"""The background thread that turns rewards into model updates, off the request path."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from .priority import BACKGROUND_NICE, lower_priority

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("ef_middleware")


class Learner:
    """One daemon thread per engine: wakes on a reward (or every ``tick`` seconds to expire
    decisions whose wait is over) and lets each loop learn what is ready.

    After a reward wakes it, it lingers ``linger`` seconds so the rewards arriving meanwhile are
    learned together: publishing a model costs about a millisecond whatever the batch, so
    learning reward by reward would spend most of the time publishing. A :meth:`Loop.flush`
    cuts the linger short.
    """

    def __init__(self, engine: Engine, *, tick: float = 1.0, linger: float = 0.05,
                 nice: int = BACKGROUND_NICE) -> None:
        self.engine = engine
        self.nice = nice
        self.tick = tick
        self.linger = linger
        self._wake = threading.Event()
        self._urgent = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="ef-learner", daemon=True)
                self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self, urgent: bool = False) -> None:
        """Learn soon; ``urgent``: now (someone waits for it)."""
        if urgent:
            self._urgent.set()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._urgent.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        lower_priority(self.nice)
        while not self._stop.is_set():
            if self._wake.wait(self.tick) and not self._urgent.is_set():
                self._urgent.wait(self.linger)  # gather the rewards arriving meanwhile
            self._wake.clear()
            self._urgent.clear()
            for loop in list(self.engine.loops.values()):
                try:
                    loop.learn_pending()
                except Exception:  # keep learning for the other loops; say what failed once
                    log.exception("ef_middleware: learner failed on loop %r", loop.name)
