"""Thompson sampling on a Bayesian logistic last layer: exploration per visitor."""

from __future__ import annotations

import numpy as np

from ..decision import Choice
from .base import Candidates, Policy


class Laplace(Policy):
    """Score = the network's logit + ``scale`` * sd * N(0, 1), one draw per action.

    ``sd`` is the Laplace posterior width of the last layer for this context and action
    (:class:`~ef_middleware.posterior.LaplacePosterior`): wide for visitors unlike those the
    loop has learned from, narrow for familiar ones, so exploration goes where the model is
    unsure *for this visitor*. Logits keep rare conversions and near-certain outcomes on one
    scale. ``scale`` < 1 tempers the posterior; 0.35 is the compromise of a development sweep
    over 0.25, 0.35 and 0.5 (docs/design.md, "Scale 0.35").
    """

    name = "laplace"

    def __init__(self, *, scale: float = 0.35) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError("scale must be positive")
        self.scale = scale

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        if c.posterior is None:
            return self.greedy(c.logits)
        return self.gaussian_view(c, rng, lambda: (c.logits, self.scale * c.widths()))
