"""Epsilon-greedy exploration."""

from __future__ import annotations

import numpy as np

from ..decision import Choice
from .base import Candidates, Policy


class EpsilonGreedy(Policy):
    """The best predicted action with probability 1 - epsilon + epsilon / K, every other
    action with epsilon / K: the propensities are exact."""

    name = "epsilon-greedy"

    def __init__(self, *, epsilon: float = 0.05) -> None:
        super().__init__(samples=1)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        self.epsilon = epsilon

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        k = c.mean.shape[0]
        probs = np.full(k, self.epsilon / k, dtype=np.float32)
        probs[int(np.argmax(c.mean))] += 1.0 - self.epsilon
        index = int(rng.choice(k, p=probs / probs.sum()))
        return Choice(index, probs, exact=True)
