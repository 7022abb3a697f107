"""Upper confidence bound on the learned representation (GLM-UCB on the last layer)."""

from __future__ import annotations

import numpy as np

from ..decision import Choice
from .base import Candidates, Policy


class UCB(Policy):
    """Score = logit + ``alpha`` * sd, with ``sd`` the Laplace posterior width of the last
    layer for this context and action (Li, Lu & Zhou 2017 for generalised linear bandits; Zhou
    et al. 2020 use the same width on a network's gradient features). Deterministic, so the
    propensity is exactly 1 for the argmax.
    """

    name = "ucb"

    def __init__(self, *, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        post = c.posterior
        if post is None:  # no posterior: prefer the least tried action
            return self.greedy(c.mean + self.alpha / np.sqrt(c.counts + 1.0))
        return self.greedy(c.logits + self.alpha * c.widths())
