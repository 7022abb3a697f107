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
    draw one weight vector for all actions, which correlates the draws. Before the posterior
    has any sample, scores are drawn around the network's mean with the prior's width.
    """

    name = "neural-linear"

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError("scale must be positive")
        self.scale = scale

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        post = c.posterior
        if post is None:
            return self.greedy(c.mean)
        mean = post.mean
        if mean is None:
            # No sample folded in yet: the network's mean with the prior's width, which
            # explores (greedy there chose one action for every visitor; the prior's mean of
            # 0 ignored the network; reviews of 2026-12-05).
            def prior_scores() -> tuple[FloatArray, FloatArray]:
                return c.mean, self.scale * post.sd(with_bias(c.hidden))

            return self.gaussian_view(c, rng, prior_scores)

        def scores() -> tuple[FloatArray, FloatArray]:
            phi = with_bias(c.hidden)
            return phi @ mean, self.scale * post.sd(phi)

        return self.gaussian_view(c, rng, scores)
