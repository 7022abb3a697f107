"""A bounded memory that forgets its oldest entry one at a time.

The request path memoises what visitors bring (pooled text vectors, per-call actions and their
projected rows). Each memo is bounded, and used to be emptied whole when full: simple, but
the request that filled it then freed every entry at once while holding the interpreter lock,
tens of thousands of numpy arrays. Measured here (2026-12-05, a lab script): clearing 50,000
pooled vectors took 14-16 ms, 20,000 projected rows 5-6 ms; under a catalogue's load (150
ranks a second, 10 per-call items each) a rank that cleared the pooled-vector memo took 40-48
ms (docs/benchmarks.md, "Stalls inside `rank()`"). Dropping the oldest entry when a new one
comes makes a ``put`` cost about 1.6 us instead of a dict's 0.5, and keeps the entries visitors
brought last.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

__all__ = ["Memo"]

K = TypeVar("K")
V = TypeVar("V")


class Memo(OrderedDict[K, V]):
    """An ``OrderedDict`` of at most ``limit`` entries: :meth:`put` drops the oldest first.

    Safe to share between threads for what the package does with it (``get`` and ``put``):
    each step is an operation of the C implementation under the interpreter lock. Threads that
    put at the same moment can each add their entry after the others made room, so the memo
    may hold one entry more per such thread, until the next ``put`` brings it back.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 0:
            raise ValueError(f"a memo's limit is a number of entries, not {limit}")
        self.limit = limit  # 0: it keeps nothing

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` under ``key``; past the limit, forget the oldest entry first."""
        if self.limit <= 0:
            return
        if key not in self:
            while len(self) >= self.limit:
                try:
                    self.popitem(last=False)
                except KeyError:  # another thread emptied it meanwhile
                    break
        self[key] = value
