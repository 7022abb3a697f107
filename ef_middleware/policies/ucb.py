"""Upper confidence bound on the learned representation (LinUCB on the last layer)."""

from __future__ import annotations

import numpy as np

from ..posterior import with_bias
from .base import Candidates, Choice, Policy


class UCB(Policy):
    """Score = prediction + ``alpha`` * sqrt(phi' Sigma phi), the posterior width of the
    last-layer regression (Li et al. 2010; Zhou et al. 2020 use the same width on a network's
    gradient features). Deterministic, so the propensity is exactly 1 for the argmax.
    """

    name = "ucb"

    def __init__(self, *, alpha: float = 1.0, samples: int = 1) -> None:
        super().__init__(samples=samples)
        self.alpha = alpha

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        post = c.posterior
        if post is None:  # before the first posterior: prefer the least tried action
            return self.greedy(c.mean + self.alpha / np.sqrt(c.counts + 1.0))
        phi = with_bias(c.hidden)
        width = np.linalg.norm(phi @ post.chol, axis=1)  # sqrt(phi' L L' phi)
        return self.greedy(c.mean + self.alpha * width)
