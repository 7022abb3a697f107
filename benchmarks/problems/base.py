"""The stream every agent sees: contexts plus expected and realized payoff of every arm.

Realized payoffs are drawn once per (step, arm) from the stream's seed, so every agent meets the
same luck (common random numbers) and differences between agents come from their choices alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

FeatureValue: TypeAlias = str | int | float | bool
Context: TypeAlias = Mapping[str, FeatureValue]
Array: TypeAlias = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Action:
    """One arm: its id and the text features the engine embeds."""

    id: str
    features: Mapping[str, str]

    def to_engine(self) -> dict[str, object]:
        return {"id": self.id, "features": dict(self.features)}


@dataclass(frozen=True)
class Stream:
    """``horizon`` steps: context per step, ``expected[t, k]`` and ``realized[t, k]`` payoffs."""

    contexts: list[Context]
    expected: Array
    realized: Array
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        return len(self.contexts)

    @property
    def oracle_expected(self) -> Array:
        """Expected payoff of the best arm at each step."""
        return np.asarray(self.expected.max(axis=1), dtype=np.float64)

    @property
    def oracle_arm(self) -> npt.NDArray[np.int64]:
        return np.asarray(self.expected.argmax(axis=1), dtype=np.int64)


class Problem(Protocol):
    """A bandit problem; ``stream(seed, horizon)`` must be a pure function of its arguments."""

    name: str
    actions: list[Action]
    reward_range: tuple[float, float]

    def stream(self, seed: int, horizon: int) -> Stream: ...


def stream_rng(problem: str, seed: int) -> np.random.Generator:
    """The generator for one problem's stream; independent of the agents' generators."""
    salt = sum(ord(c) * (i + 1) for i, c in enumerate(problem))
    return np.random.default_rng([seed, salt, 1])
