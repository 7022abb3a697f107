"""The interface every benchmarked policy implements, and the uniform-random baseline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from benchmarks.problems.base import Context, Problem


class Agent(Protocol):
    """Plays one stream: ``act`` chooses an arm, ``learn`` receives that arm's payoff."""

    def act(self, context: Context) -> tuple[int, float]:
        """Index of the chosen arm in ``problem.actions`` and the probability it was chosen."""
        ...

    def learn(self, reward: float) -> None:
        """Payoff of the arm chosen by the last ``act``."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AgentSpec:
    """A named way to build a fresh agent for one (problem, seed) run."""

    name: str
    make: Callable[[Problem, int], Agent]
    kind: str = "baseline"  # engine | vw | baseline


def agent_rng(name: str, seed: int) -> np.random.Generator:
    """Seeded generator for an agent's own random choices, independent of the stream's."""
    salt = sum(ord(c) * (i + 1) for i, c in enumerate(name))
    return np.random.default_rng([seed, salt, 2])


class UniformAgent:
    """Chooses every arm with equal probability."""

    def __init__(self, problem: Problem, seed: int) -> None:
        self._k = len(problem.actions)
        self._rng = agent_rng("uniform", seed)

    def act(self, context: Context) -> tuple[int, float]:
        return int(self._rng.integers(self._k)), 1.0 / self._k

    def learn(self, reward: float) -> None:
        return None

    def close(self) -> None:
        return None


UNIFORM = AgentSpec("uniform", UniformAgent, "baseline")
