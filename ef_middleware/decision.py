"""What a ranking returns, and what is logged about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .features import Action


@dataclass(frozen=True)
class RankedAction:
    """One action of a ranking: its chance of being chosen and its predicted reward."""

    action_id: str
    probability: float
    predicted_reward: float


@dataclass(frozen=True)
class Decision:
    """The outcome of :meth:`Loop.rank`.

    ``probability`` is the true propensity of the chosen action under the policy (exact for
    epsilon-greedy, UCB and uniform; a Monte Carlo estimate for Thompson variants, see
    ``exact``). ``ranking`` lists every candidate, most likely first.
    """

    loop: str
    event_id: str
    action: Action
    probability: float
    ranking: tuple[RankedAction, ...]
    model_version: int
    logged: bool = True
    exact: bool = True

    @property
    def action_id(self) -> str:
        return self.action.id


@dataclass
class DecisionRecord:
    """The logged decision: what counterfactual evaluation and the learner need."""

    event_id: str
    time: float
    context: dict[str, Any]
    action_ids: list[str]
    chosen: int
    probabilities: list[float]
    model_version: int
    action: Action
    inputs: Any = field(repr=False, default=None)  # EncodedContext, memory only

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "time": self.time,
            "context": self.context,
            "actions": self.action_ids,
            "chosen": self.chosen,
            "probabilities": self.probabilities,
            "model_version": self.model_version,
            "action_features": dict(self.action.features),
        }
