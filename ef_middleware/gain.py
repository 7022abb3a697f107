"""How much of the reward the network predicts, measured on samples it has not learned yet.

The replay ratio that works best depends on how much of the reward is signal. Where rewards
are nearly deterministic given the context (MAGIC's classes), every replayed step teaches the
network more, and a ratio of 4 leaves it far behind what the data already say; where they are
rare, noisy conversions (the web simulator), more replay teaches the network the noise, and its
predictions of new visitors get worse than a constant's (docs/design.md, "Replay that follows
the signal").

:class:`FreshGain` measures which case a loop is in. Each sample's first optimiser step sees it
before the network has learned from it, so the log loss there is an honest (prequential) test
loss. It is compared with the log loss of a constant prediction, the recent mean reward (over
the same horizon, so that a base rate that drifts is not taken for signal), on the same
samples. The *relative information gain* ``1 - model loss / constant loss`` (one minus
He et al.'s (2014) normalised entropy) is about 0 when the network predicts no better than the
mean reward, and grows with the share of the reward it explains. Comparing the two losses on
the same samples cancels most of the label noise both share, so a thousand samples give a
steady figure even for rewards that are 1 once in ten.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._types import FloatArray

HORIZON = 1_000  # samples: the exponential average's time constant
MIN_WEIGHT = 0.1  # of the average's full weight (about 105 samples) before the gain is read
PROBABILITY_FLOOR = 1e-4  # the constant prediction stays inside (floor, 1 - floor)


class FreshGain:
    """Exponentially averaged log losses of the network and of the mean reward on fresh samples.

    Both averages carry the same weights, so their ratio needs no bias correction; ``gain``
    stays ``None`` until the averages hold ``MIN_WEIGHT`` of their full weight. The mean reward
    is discounted the same way: ``reward_sum`` over the discounted count of the samples, which
    is ``horizon * weight`` (with half a reward of prior).
    """

    def __init__(self, horizon: float = HORIZON) -> None:
        self.horizon = horizon
        self.keep = 1.0 - 1.0 / horizon  # per sample
        self.model_loss = 0.0
        self.constant_loss = 0.0
        self.weight = 0.0
        self.reward_sum = 0.0  # discounted sum of the rewards seen

    def add(self, logits: FloatArray, rewards: FloatArray) -> None:
        """Fold in fresh samples: the network's ``logits`` for them before it learned them and
        their normalised ``rewards`` in [0, 1]."""
        n = int(rewards.shape[0])
        if n == 0:
            return
        y = rewards.astype(np.float64)
        z = logits.astype(np.float64)
        count = self.horizon * self.weight  # discounted, before these samples
        mean = (self.reward_sum + 0.5) / (count + 1.0)
        p = min(max(mean, PROBABILITY_FLOOR), 1.0 - PROBABILITY_FLOOR)
        constant = float(np.mean(-(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))))
        model = float(np.mean(np.logaddexp(0.0, z) - y * z))  # -log sigmoid, stably
        keep = self.keep**n
        self.constant_loss = keep * self.constant_loss + (1.0 - keep) * constant
        self.model_loss = keep * self.model_loss + (1.0 - keep) * model
        self.weight = keep * self.weight + (1.0 - keep)
        ages = self.keep ** np.arange(n - 1, -1, -1, dtype=np.float64)  # the last is newest
        self.reward_sum = keep * self.reward_sum + float(ages @ y)

    @property
    def gain(self) -> float | None:
        """``1 - model loss / constant loss`` over the recent fresh samples, or ``None`` while
        too few were seen."""
        if self.weight < MIN_WEIGHT or self.constant_loss <= 0.0:
            return None
        return 1.0 - self.model_loss / self.constant_loss

    def state(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in _STATE}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take a saved :meth:`state`; ``ValueError`` (and nothing changed) for one that is
        missing a field, not finite, negative or out of range."""
        try:
            values = {name: float(state[name]) for name in _STATE}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the fresh-sample gain's state is damaged: {exc!r}") from exc
        if not (all(math.isfinite(v) and v >= 0 for v in values.values())
                and values["weight"] <= 1.0 + 1e-9
                and values["reward_sum"] <= self.horizon * values["weight"] * (1.0 + 1e-9)):
            raise ValueError(f"the fresh-sample gain's state is damaged: {dict(state)!r}")
        for name, value in values.items():
            setattr(self, name, value)


_STATE = ("model_loss", "constant_loss", "weight", "reward_sum")
