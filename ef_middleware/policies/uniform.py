"""A plain A/B/n split: every action equally likely (sticky per visitor in the middleware)."""

from __future__ import annotations

import numpy as np

from ..decision import Choice
from .base import Candidates, Policy


class Uniform(Policy):
    """Chooses uniformly at random; the propensity is exactly 1/K."""

    name = "uniform"

    def __init__(self) -> None:
        super().__init__(samples=1)

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        k = c.mean.shape[0]
        return Choice(int(rng.integers(k)), np.full(k, 1.0 / k, dtype=np.float32), exact=True)
