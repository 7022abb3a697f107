"""Samples learned per action and their summed rewards, discounted with a half-life or not.

Thompson sampling's noise (and UCB's bonus before its posterior exists) shrinks as
``1 / sqrt(count + 1)``, and ``bernoulli-ts`` draws from
``Beta(1 + successes, 1 + failures)``. Counted forever, the exploration all but stops once
every action has thousands of samples, and a population that shifts later is met by a policy
that no longer looks. With a half-life of ``H`` samples, each learned sample multiplies every
count by ``0.5 ** (1 / H)`` before adding its own (discounted Thompson sampling, Raj &
Kalyani 2017): the counts level off near ``H / ln 2`` in all, shared by the actions as the
policy chooses them, so exploration never fades below that level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["ActionCounts"]

LIMIT = 100_000  # action ids counted (about 100 bytes each, in memory and in each snapshot)


class ActionCounts:
    """Per action id: samples learned and summed normalised rewards, discounted lazily.

    ``entries[id]`` is ``[count, summed reward, clock of its last write]``; ``clock`` counts
    the samples added. A read multiplies by ``keep ** age`` (nothing walks the actions per
    sample, so K = 1,000 costs what K = 4 costs). Only the learner thread writes.

    Ids come and go with per-call action lists (the day's articles): past :data:`LIMIT` ids,
    a new one first drops the tenth of the ids learned longest ago (one that comes back
    starts from zero, as a new action does), never one of :attr:`kept` (the loop's own
    actions: a variant rarely chosen would otherwise lose its count to the churn).
    """

    def __init__(self, half_life: float | None = None) -> None:
        if half_life is not None and not half_life > 0:
            raise ValueError("half_life must be a positive number of samples (math.inf or "
                             "None: counted forever)")
        self.keep = 1.0 if half_life is None else 0.5 ** (1.0 / half_life)  # inf: 1.0
        self.entries: dict[str, list[float]] = {}
        self.clock = 0
        self.kept: frozenset[str] = frozenset()  # ids never dropped (the loop's own actions)

    def add(self, action_id: str, reward: float) -> None:
        """Count one learned sample of ``action_id`` with its normalised ``reward``."""
        self.clock += 1
        entry = self.entries.get(action_id)
        if entry is None:
            if len(self.entries) >= LIMIT:
                self._evict()
            self.entries[action_id] = [1.0, reward, float(self.clock)]
            return
        if self.keep != 1.0:
            factor = self.keep ** (self.clock - entry[2])
            entry[0] *= factor
            entry[1] *= factor
        entry[0] += 1.0
        entry[1] += reward
        entry[2] = float(self.clock)

    def _evict(self) -> None:
        """Drop the tenth of the ids whose last sample is oldest (a partition, not a sort:
        sorting 100,000 entries held the interpreter lock 70-125 ms, a review found)."""
        ids = [i for i in self.entries if i not in self.kept]
        if not ids:
            return
        written = np.fromiter((self.entries[i][2] for i in ids), np.float64, len(ids))
        drop = min(len(ids), max(1, len(self.entries) // 10))
        for i in np.argpartition(written, drop - 1)[:drop].tolist():
            del self.entries[ids[i]]

    def get(self, action_id: str) -> tuple[float, float]:
        """``(count, summed reward)`` of ``action_id`` now (zeros for an action never learned)."""
        entry = self.entries.get(action_id)
        if entry is None:
            return 0.0, 0.0
        if self.keep == 1.0:
            return entry[0], entry[1]
        factor = self.keep ** (self.clock - entry[2])
        return entry[0] * factor, entry[1] * factor

    def state(self) -> dict[str, Any]:
        """JSON-ready: the clock and every entry."""
        return {"clock": self.clock, "entries": self.entries}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`state`, or an older snapshot's ``{id: [count, summed reward]}``."""
        entries = state.get("entries")
        if isinstance(entries, Mapping):
            self.clock = int(state.get("clock", 0))
        else:  # before counts were discounted: the counts as of now
            entries, self.clock = state, 0
        self.entries = {str(k): [float(v[0]), float(v[1]),
                                 float(v[2]) if len(v) > 2 else float(self.clock)]
                        for k, v in entries.items()}
