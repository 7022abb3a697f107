"""Beta-Bernoulli Thompson sampling without context (the classic multi-armed bandit)."""

from __future__ import annotations

from typing import cast

import numpy as np

from .._types import Float64Array, FloatArray
from ..decision import LAZY_PROPENSITIES, Choice
from .base import Candidates, Policy
from .winprob import MAX_EXACT, beta_win_probabilities, beta_win_probabilities_wide


class BernoulliThompson(Policy):
    """Each action's conversion rate has a Beta(1 + successes, 1 + failures) posterior.

    Rewards normalised to [0, 1] count as fractional successes (Agrawal & Goyal 2012 show the
    Bernoulli trick keeps the regret bound). Context is ignored: every visitor is the same.
    One draw per action chooses; the propensities are integrals computed on demand, one per
    published model: the decisions drawn between two publications share their Beta
    parameters (see ``resolve_choices``).
    """

    name = "bernoulli-ts"

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        a, b = cast("tuple[Float64Array, Float64Array]", self.of_counts(c, _posterior))
        index = int(np.argmax(rng.beta(a, b)))
        return Choice(index, lazy=("beta", (a, b)))


def _posterior(counts: FloatArray, successes: FloatArray) -> tuple[Float64Array, Float64Array]:
    a = 1.0 + successes.astype(np.float64)
    b = 1.0 + np.maximum(counts - successes, 0.0).astype(np.float64)
    return a, b


def _probabilities(a: Float64Array, b: Float64Array) -> FloatArray:
    if a.size <= MAX_EXACT:
        return beta_win_probabilities(a, b).astype(np.float32)
    out: FloatArray = beta_win_probabilities_wide(a, b).astype(np.float32)
    return out


LAZY_PROPENSITIES["beta"] = _probabilities
