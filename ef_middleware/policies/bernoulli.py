"""Beta-Bernoulli Thompson sampling without context (the classic multi-armed bandit)."""

from __future__ import annotations

import numpy as np

from .._types import Float64Array, FloatArray
from ..decision import LAZY_PROPENSITIES, Choice
from .base import Candidates, Policy
from .winprob import MAX_EXACT, beta_win_probabilities


class BernoulliThompson(Policy):
    """Each action's conversion rate has a Beta(1 + successes, 1 + failures) posterior.

    Rewards normalised to [0, 1] count as fractional successes (Agrawal & Goyal 2012 show the
    Bernoulli trick keeps the regret bound). Context is ignored: every visitor is the same.
    One draw per action chooses; the propensities are exact integrals up to ``MAX_EXACT``
    actions and Monte Carlo beyond, computed on demand.
    """

    name = "bernoulli-ts"

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        k = c.counts.shape[0]
        a = 1.0 + c.successes.astype(np.float64)
        b = 1.0 + np.maximum(c.counts - c.successes, 0.0).astype(np.float64)
        index = int(np.argmax(rng.beta(a, b)))
        seed = None if k <= MAX_EXACT else int(rng.integers(2**62))
        return Choice(index, exact=k <= MAX_EXACT,
                      lazy=("beta", (a, b, index, self.draws(k), seed)))


def _probabilities(a: Float64Array, b: Float64Array, index: int, draws: int,
                   seed: int | None) -> FloatArray:
    if seed is None:
        return beta_win_probabilities(a, b).astype(np.float32)
    winners = np.argmax(np.random.default_rng(seed).beta(a, b, size=(draws, a.size)), axis=1)
    counts = np.bincount(winners, minlength=a.size).astype(np.float64)
    counts[index] += 1.0  # the draw that made the choice
    out: FloatArray = (counts / (draws + 1)).astype(np.float32)
    return out


LAZY_PROPENSITIES["beta"] = _probabilities
