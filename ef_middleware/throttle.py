"""A warning that could repeat on every page view or every pass is let through once a minute.

A failure on the request path (a broken model, a failing context hook, a full disk) happens on
every page view until someone fixes it: one log line each would be thousands a minute and bury
the host's own logs. :class:`Throttle` lets the first line through at once, holds back the same
warning for the next ``every`` seconds, and counts what it held back so the next line it lets
through can say so: nothing is hidden, the log stays readable.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable

__all__ = ["KEYS_KEPT", "Throttle", "held_back"]

KEYS_KEPT = 1_000  # distinct warnings remembered; past it they all start over


class Throttle:
    """At most one warning per ``key`` every ``every`` seconds (thread-safe).

    Parameters
    ----------
    every
        Seconds between two warnings of one key.
    clock
        Seconds, increasing (the default ``time.monotonic``; tests inject their own).

    Examples
    --------
    >>> now = [0.0]
    >>> throttle = Throttle(60, clock=lambda: now[0])
    >>> throttle.allow("hero"), throttle.allow("hero"), throttle.allow("hero")
    (0, None, None)
    >>> now[0] = 61
    >>> throttle.allow("hero")  # two were held back since the last line
    2
    """

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}  # when each key was last let through
        self._held: dict[Hashable, int] = {}

    def allow(self, key: Hashable = None) -> int | None:
        """``None`` to hold this warning back, otherwise the number held back since the last
        one of ``key`` was let through (log it now)."""
        with self._lock:
            now = self._clock()  # read under the lock: one order for every thread
            # A clock set back further than a window (a wall clock) lets the warning through
            # rather than hold it for as long as it was set back.
            if abs(now - self._last.get(key, -math.inf)) < self.every:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            if len(self._last) >= KEYS_KEPT and key not in self._last:
                self._last.clear()  # bounded: keys can come from many loops and kinds
                self._held.clear()
            self._last[key] = now
            return self._held.pop(key, 0)


def held_back(count: int) -> str:
    """The end of a warning let through after ``count`` like it were held back (or nothing)."""
    return f" ({count} more like it since the last one logged)" if count else ""
