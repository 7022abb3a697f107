"""Thompson sampling with prediction noise that shrinks as an action gathers data."""

from __future__ import annotations

import numpy as np

from .base import Candidates, Choice, Policy


class Thompson(Policy):
    """Score = prediction + ``noise`` * N(0, 1) / sqrt(n_a + 1), n_a = learned decisions of a.

    The Gaussian perturbation approximates a posterior whose width falls like 1/sqrt(n)
    (Chapelle & Li 2011 use the same shape for their logistic Thompson sampler).
    """

    name = "thompson"

    def __init__(self, *, noise: float = 0.3, samples: int = 1000) -> None:
        super().__init__(samples=samples)
        self.noise = noise

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        k = c.mean.shape[0]
        scale = (self.noise / np.sqrt(c.counts + 1.0)).astype(np.float32)
        z = rng.standard_normal((self.draws(k), k), dtype=np.float32)
        return self.monte_carlo(c.mean + z * scale)
