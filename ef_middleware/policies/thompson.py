"""Thompson sampling with prediction noise that shrinks as an action gathers data."""

from __future__ import annotations

import numpy as np

from .base import Candidates, Choice, Policy

PRUNE = 7.0


class Thompson(Policy):
    """Score = prediction + ``noise`` * N(0, 1) / sqrt(n_a + 1), n_a = learned decisions of a.

    The Gaussian perturbation approximates a posterior whose width falls like 1/sqrt(n)
    (Chapelle & Li 2011 use the same shape for their logistic Thompson sampler).
    """

    name = "thompson"

    def __init__(self, *, noise: float = 0.5, samples: int = 1000) -> None:
        super().__init__(samples=samples)
        self.noise = noise

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        scale = (self.noise / np.sqrt(c.counts + 1.0)).astype(np.float32)
        # An action whose score is PRUNE sigmas below another's floor wins with probability
        # < 1e-12: it gets propensity 0 and costs no samples.
        floor = float(np.max(c.mean - PRUNE * scale))
        live = np.flatnonzero(c.mean + PRUNE * scale >= floor)
        mean, scale = c.mean[live], scale[live]
        z = rng.standard_normal((self.draws(live.size), live.size), dtype=np.float32)
        sub = self.monte_carlo(mean + z * scale)
        probs = np.zeros(c.mean.shape[0], dtype=np.float32)
        probs[live] = sub.probabilities
        return Choice(int(live[sub.index]), probs, exact=False)
