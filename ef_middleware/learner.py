"""The background thread that turns rewards into model updates, off the request path."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from .priority import BACKGROUND_NICE, lower_priority
from .store import release_thread

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("ef_middleware")
MAINTENANCE_WARN_AFTER = 60.0  # s of failing maintenance before one warning


class Lease:
    """Who learns from a store: one process should, and a second one says so.

    Each learner holds an expiring key in the store and renews it every ``renew_every``
    seconds. A learner that finds the key held by another process logs one warning: pending
    decisions live in the memory of the process that made them, so with several web workers on
    one store each would learn its own model, and a reward that reaches another worker than
    the deciding one is rejected as unknown (docs/architecture.md, "Not built yet").
    """

    KEY = "lease:learner"

    def __init__(self, engine: Engine, *, seconds: float = 30.0,
                 renew_every: float = 5.0) -> None:
        self.store = engine.store
        self.seconds = seconds
        self.renew_every = renew_every
        self.token = f"pid {os.getpid()} on {socket.gethostname()} ({id(engine):x})".encode()
        self.holder: bytes | None = None
        self._next = 0.0

    def renew(self) -> None:
        """Take or extend the lease (at most every ``renew_every`` s); warn once per holder."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.renew_every
        try:
            if not self.store.add(self.KEY, self.token, expire=self.seconds):
                holder = self.store.get(self.KEY)
                if holder is not None and holder != self.token and self._ended(holder):
                    holder = self.token  # left by a process of this host that has ended
                if holder != self.token:
                    if holder is not None and holder != self.holder:
                        log.warning("ef_middleware: %s already learns from this store; run one "
                                    "process (one web worker) per store, or each learns its "
                                    "own model and misses the others' rewards",
                                    holder.decode(errors="replace"))
                    self.holder = holder
                    return
                self.store.set(self.KEY, self.token, expire=self.seconds)
            self.holder = self.token
        except Exception as exc:  # the lease only informs: never stop learning for it
            log.debug("ef_middleware: learner lease: %s", exc)

    @staticmethod
    def _ended(holder: bytes) -> bool:
        """Whether ``holder`` names a process of this host that no longer runs (a crash or
        a kill left its lease to expire)."""
        words = holder.decode(errors="replace").split()
        if len(words) < 4 or words[0] != "pid" or not (words[1].isascii() and words[1].isdigit()):
            return False
        if words[3] != socket.gethostname():
            return False
        try:
            os.kill(int(words[1]), 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, another user's
            return False
        return False

    def release(self) -> None:
        try:
            if self.store.get(self.KEY) == self.token:
                self.store.delete(self.KEY)
        except Exception as exc:
            log.debug("ef_middleware: learner lease: %s", exc)


class Learner:
    """One daemon thread per engine: wakes on a reward (or every ``tick`` seconds to expire
    decisions whose wait is over) and lets each loop learn what is ready.

    After a reward wakes it, it lingers ``linger`` seconds so the rewards arriving meanwhile are
    learned together: publishing a model costs about a millisecond whatever the batch, so
    learning reward by reward would spend most of the time publishing. A :meth:`Loop.flush`
    cuts the linger short, and so does a backlog: when samples arrived while it learned, it
    goes on at once.
    """

    def __init__(self, engine: Engine, *, tick: float = 1.0, linger: float = 0.05,
                 nice: int = BACKGROUND_NICE, maintain_every: float = 0.25) -> None:
        self.engine = engine
        self.maintain_every = maintain_every
        self._next_maintenance = 0.0
        self._maintenance_failing_since: float | None = None
        self._maintenance_warned = False
        self.nice = nice
        self.tick = tick
        self.linger = linger
        self._wake = threading.Event()
        self._urgent = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.lease = Lease(engine)

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="ef-learner", daemon=True)
                self._thread.start()

    def runs_here(self) -> bool:
        """Whether the calling thread is the learner's."""
        return self._thread is not None and self._thread is threading.current_thread()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run (the thread may have ended since)."""
        return self._thread is not None

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
        self.lease.release()

    def _run(self) -> None:
        lower_priority(self.nice)
        try:
            self._learn_until_stopped()
        finally:
            release_thread(self.engine.store)

    def _learn_until_stopped(self) -> None:
        behind = False
        while not self._stop.is_set():
            self.lease.renew()
            # Behind (samples came in while it learned): go on at once, lingering would only
            # let the backlog grow.
            if not behind and self._wake.wait(self.tick) and not self._urgent.is_set():
                self._urgent.wait(self.linger)  # gather the rewards arriving meanwhile
            self._wake.clear()
            self._urgent.clear()
            behind = False
            for loop in list(self.engine.loops.values()):
                try:
                    loop.learn_pending()
                    behind = behind or loop.waiting > 0
                except Exception:  # keep learning for the other loops; say what failed once
                    log.exception("ef_middleware: learner failed on loop %r", loop.name)
            self._maintain()

    def _maintain(self) -> None:
        """The store's housekeeping (checkpoints), at most every ``maintain_every`` seconds."""
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.maintain_every
        try:
            self.engine.store.maintain()
        except Exception as exc:  # housekeeping only: never stop learning for it
            # A lock taken by another process fails now and then; a store that fails for a
            # minute on end (its folder deleted, a full disk) is worth a warning, once.
            if self._maintenance_failing_since is None:
                self._maintenance_failing_since = now
            elif (now - self._maintenance_failing_since > MAINTENANCE_WARN_AFTER
                  and not self._maintenance_warned):
                self._maintenance_warned = True
                log.warning("ef_middleware: the store's maintenance has failed for a minute:"
                            " %s: %s", type(exc).__name__, " ".join(str(exc).split()))
            log.debug("ef_middleware: store maintenance: %s", exc)
        else:
            self._maintenance_failing_since = None
            self._maintenance_warned = False
