"""Thompson sampling with prediction noise that shrinks as an action gathers data (the default
strategy)."""

from __future__ import annotations

import numpy as np

from ..decision import Choice
from .base import Candidates, Policy


class Thompson(Policy):
    """Score = prediction + ``noise`` * N(0, 1) / sqrt(n_a + 1), n_a = learned decisions of a.

    The Gaussian perturbation approximates a posterior whose width falls like 1/sqrt(n)
    (Chapelle & Li 2011 use the same shape for their logistic Thompson sampler). The scores of
    the actions are drawn independently, so the propensities are exact integrals.
    """

    name = "thompson"

    def __init__(self, *, noise: float = 0.5) -> None:
        super().__init__()
        if not noise > 0:
            raise ValueError("noise must be positive")
        self.noise = noise

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        return self.gaussian_view(c, rng, lambda: (c.mean, self.noise / np.sqrt(c.counts + 1.0)))
