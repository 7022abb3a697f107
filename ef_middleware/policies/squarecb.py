"""SquareCB: inverse-gap weighting of the model's predictions (Foster & Rakhlin 2020)."""

from __future__ import annotations

import numpy as np

from .._types import FloatArray
from ..decision import Choice
from .base import Candidates, Policy


class SquareCB(Policy):
    """Each action other than the best predicted one gets ``1 / (K + gamma * gap)``, the best
    the rest; ``gap`` is how far its predicted reward (normalised to [0, 1]) falls below the
    best's, and ``gamma = gamma_scale * n ** gamma_exponent`` grows with the samples ``n`` the
    model has learned.

    Exploration never stops, it only narrows to the actions whose predictions are close: an
    action a little behind keeps a few percent of the visitors, so a change in the population
    is seen within a few hundred visitors. That is how Vowpal Wabbit's ``--squarecb`` (same
    rule and defaults) follows the simulator's shift. The propensities are exact.
    """

    name = "squarecb"

    def __init__(self, *, gamma_scale: float = 10.0, gamma_exponent: float = 0.5) -> None:
        super().__init__(samples=1)
        if not gamma_scale > 0:
            raise ValueError("gamma_scale must be positive")
        if not 0 <= gamma_exponent <= 1:
            raise ValueError("gamma_exponent must be in [0, 1]")
        self.gamma_scale = gamma_scale
        self.gamma_exponent = gamma_exponent

    def probabilities(self, mean: FloatArray, learned: int) -> FloatArray:
        """The inverse-gap weights of ``mean`` after ``learned`` samples."""
        k = mean.shape[0]
        gamma = self.gamma_scale * float(learned) ** self.gamma_exponent
        best = int(np.argmax(mean))
        gap = mean[best].astype(np.float64) - mean.astype(np.float64)
        probs = 1.0 / (k + gamma * gap)
        probs[best] = 0.0
        probs[best] = 1.0 - probs.sum()
        out: FloatArray = probs.astype(np.float32)
        return out

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        probs: FloatArray | None = c.memo.get(self.name)
        if probs is None:
            probs = c.memo[self.name] = self.probabilities(c.mean, c.learned)
        return self.sample(probs, rng)
