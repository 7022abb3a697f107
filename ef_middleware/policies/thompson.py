"""Thompson sampling with prediction noise that shrinks as an action gathers data (the default
strategy)."""

from __future__ import annotations

from typing import cast

import numpy as np

from .._types import FloatArray
from ..decision import Choice
from .base import Candidates, Policy


class Thompson(Policy):
    """Score = prediction + ``noise`` * w_a * N(0, 1) / sqrt(n_a + 1), n_a = learned samples of a.

    The Gaussian perturbation approximates a posterior whose width falls like 1/sqrt(n)
    (Chapelle & Li 2011 use the same shape for their logistic Thompson sampler). ``w_a`` is
    ``2 sqrt(r_a (1 - r_a))``, with ``r_a = (s_a + 1) / (n_a + 2)`` the action's reward rate so
    far (``s_a`` its summed normalised rewards; Beta(1, 1) prior): the standard deviation of a
    reward in [0, 1] with that mean is at most ``sqrt(r_a (1 - r_a))``, so ``noise`` (0.5)
    times ``w_a`` is the width of a Beta posterior of the action's mean, and rare conversions
    (a rate of 7%: ``w_a`` = 0.51) are not explored as widely as coin flips. An action without
    data has ``w_a = 1``. ``rate_scaled=False``: ``w_a = 1`` always, and the loop's counts are
    then kept forever unless ``count_half_life`` says otherwise (both as before 2026-12-06).
    The scores of the actions are drawn independently, so the propensities are exact integrals.
    """

    name = "thompson"

    def __init__(self, *, noise: float = 0.5, rate_scaled: bool = True) -> None:
        super().__init__()
        if not noise > 0:
            raise ValueError("noise must be positive")
        if not isinstance(rate_scaled, bool | np.bool_):
            raise ValueError("rate_scaled must be True or False")
        self.noise = noise
        self.rate_scaled = bool(rate_scaled)

    def widths(self, counts: FloatArray, successes: FloatArray) -> FloatArray:
        """The noise's standard deviation per action, from its counts and summed rewards."""
        sd: FloatArray = self.noise / np.sqrt(counts + 1.0)
        if self.rate_scaled:
            rate = np.clip((successes + 1.0) / (counts + 2.0), 0.0, 1.0)
            sd = cast("FloatArray", sd * (2.0 * np.sqrt(rate * (1.0 - rate))))  # float32 still
        return sd

    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        return self.gaussian_view(
            c, rng, lambda: (c.mean, cast("FloatArray", self.of_counts(c, self.widths))))
