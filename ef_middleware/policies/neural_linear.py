"""Neural-linear Thompson sampling (Riquelme, Tucker & Snoek 2018)."""

from __future__ import annotations

import numpy as np

from .._types import FloatArray
from ..decision import Choice
from ..posterior import with_bias
from .base import Candidates, Policy


class NeuralLinear(Policy):
    """Bayesian linear regression of the rewards on the last hidden layer.

    The network learns the representation; the Gaussian posterior of the linear head
    (:class:`~ef_middleware.posterior.LinearPosterior`, rebuilt from recent samples) supplies
    both the mean and the width of each action's score. Scores are drawn from each action's
    marginal posterior independently, so the propensities are exact integrals; Riquelme et al.
    draw one weight vector for all actions, which correlates the draws. Falls back to the
    network's mean before the first posterior exists.
    """

    name = "neural-linear"

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError("scale must be positive")
        self.scale = scale

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        post = c.posterior
        if post is None or post.mean is None:
            return self.greedy(c.mean)
        mean = post.mean

        def scores() -> tuple[FloatArray, FloatArray]:
            phi = with_bias(c.hidden)
            return phi @ mean, self.scale * post.sd(phi)

        return self.gaussian_view(c, rng, scores)
