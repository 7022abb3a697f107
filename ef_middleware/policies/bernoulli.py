"""Beta-Bernoulli Thompson sampling without context (the classic multi-armed bandit)."""

from __future__ import annotations

import numpy as np

from .base import Candidates, Choice, Policy


class BernoulliThompson(Policy):
    """Each action's conversion rate has a Beta(1 + successes, 1 + failures) posterior.

    Rewards normalised to [0, 1] count as fractional successes (Agrawal & Goyal 2012 show the
    Bernoulli trick keeps the regret bound). Context is ignored: every visitor is the same.
    """

    name = "bernoulli-ts"

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        k = c.counts.shape[0]
        a = 1.0 + c.successes.astype(np.float64)
        b = 1.0 + (c.counts - c.successes).astype(np.float64)
        draws = rng.beta(a, b, size=(self.draws(k), k)).astype(np.float32)
        return self.monte_carlo(draws)
