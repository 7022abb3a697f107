"""Thompson sampling with Monte Carlo dropout (Gal & Ghahramani 2016)."""

from __future__ import annotations

import numpy as np

from ..decision import Choice
from .base import Candidates, Policy


class DropoutThompson(Policy):
    """Each draw is one dropout mask on the last hidden layer, shared by all K actions.

    The network trains with the same dropout, so a masked forward pass is a sample from its
    approximate posterior. Masking only the last layer keeps a draw at K x 64 multiplies.
    """

    name = "thompson-dropout"

    def __init__(self, *, rate: float = 0.1, samples: int = 500) -> None:
        super().__init__(samples=samples)
        if not 0.0 < rate < 1.0:
            raise ValueError("dropout rate must be in (0, 1)")
        self.rate = rate

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        k, h = c.hidden.shape
        m = self.draws(k)
        keep = 1.0 - self.rate
        masks = (rng.random((m, h), dtype=np.float32) < keep).astype(np.float32) / keep
        # logits[m, k] = sum_h hidden[k, h] * mask[m, h] * w[h]
        logits = ((masks * c.model.w_out) @ c.hidden.T + c.model.b_out).astype(np.float32)
        return self.monte_carlo(logits)
