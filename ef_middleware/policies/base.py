"""What every exploration policy shares: its inputs, its output and the Monte Carlo helper.

A policy turns the model's view of K candidate actions into the probability of choosing each one
and a choice drawn from exactly that distribution. The chosen action's probability is the *true
propensity* logged for counterfactual evaluation: closed-form where one exists, otherwise a Monte
Carlo estimate over ``M`` independent draws of the policy's own randomness, of which the draw that
made the choice is one (so the chosen action never gets propensity 0). The estimate's standard
error is ``sqrt(p (1 - p) / M)``: at most 0.016 for ``M = 1000`` draws (K <= 20), 0.035 for
K = 100 (200 draws) and 0.0625 for K >= 313 (64 draws): see :meth:`Policy.draws`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .._types import FloatArray
from ..model import ServingModel
from ..posterior import PosteriorSnapshot


@dataclass
class Candidates:
    """The model's view of the K actions of one decision."""

    mean: FloatArray  # (K,) predicted normalised reward
    hidden: FloatArray  # (K, H) last hidden layer
    counts: FloatArray  # (K,) learned decisions per action
    successes: FloatArray  # (K,) summed normalised rewards per action
    model: ServingModel
    posterior: PosteriorSnapshot | None


@dataclass
class Choice:
    """A policy's answer: the chosen index and every action's probability of being chosen."""

    index: int
    probabilities: FloatArray  # (K,), sums to 1
    exact: bool  # closed form (True) or Monte Carlo estimate (False)


class Policy(ABC):
    """Base class: subclasses implement :meth:`choose`; ``samples`` caps Monte Carlo draws."""

    name: str = ""

    def __init__(self, *, samples: int = 1000) -> None:
        if samples < 1:
            raise ValueError("samples must be at least 1")
        self.samples = samples

    @abstractmethod
    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        """Draw a choice and return it with the probabilities of every action."""

    def draws(self, k: int) -> int:
        """Monte Carlo draws for K actions: fewer for large K, to bound the work at ~2e4
        sampled scores (K = 10: 1000 draws; K = 100: 200; K >= 313: 64)."""
        return int(max(64, min(self.samples, 20_000 // max(k, 1))))

    @staticmethod
    def monte_carlo(scores: FloatArray) -> Choice:
        """Choice and probabilities from ``(M, K)`` sampled scores; draw 0 makes the choice."""
        winners = np.argmax(scores, axis=1)
        probs = np.bincount(winners, minlength=scores.shape[1]).astype(np.float32)
        probs /= scores.shape[0]
        return Choice(int(winners[0]), probs, exact=False)

    @staticmethod
    def greedy(scores: FloatArray) -> Choice:
        """A deterministic argmax: propensity 1 for the best, exactly."""
        probs = np.zeros(scores.shape[0], dtype=np.float32)
        index = int(np.argmax(scores))
        probs[index] = 1.0
        return Choice(index, probs, exact=True)
