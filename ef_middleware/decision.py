"""What a ranking returns, and what is logged about it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._types import Float64Array, FloatArray
from .features import Action


@dataclass(frozen=True)
class RankedAction:
    """One action of a ranking: its chance of being chosen and its predicted reward."""

    action_id: str
    probability: float
    predicted_reward: float


class Choice:
    """A policy's answer: the chosen index and every action's probability of being chosen.

    The choice is drawn on the request path; the probabilities may be computed on first use
    (``compute``), so a page view that only needs the chosen variant never pays for them. The
    learner reads them when it logs the decision. ``compute`` must be deterministic.
    """

    __slots__ = ("_compute", "_probabilities", "exact", "gaussian", "index")

    def __init__(self, index: int, probabilities: FloatArray | None = None, exact: bool = True,
                 compute: Callable[[], FloatArray] | None = None,
                 gaussian: tuple[Float64Array, Float64Array] | None = None) -> None:
        if probabilities is None and compute is None:
            raise ValueError("a Choice needs probabilities or a way to compute them")
        self.index = index
        self.exact = exact
        self._probabilities = probabilities
        self._compute = compute
        self.gaussian = gaussian  # (means, sds) of independent Gaussian scores, if that's all

    @property
    def resolved(self) -> bool:
        """Whether the probabilities are computed already."""
        return self._probabilities is not None

    def resolve(self, probabilities: FloatArray) -> None:
        """Set the probabilities computed elsewhere (batched, see ``resolve_choices``)."""
        self._probabilities = probabilities

    @property
    def probabilities(self) -> FloatArray:
        """``(K,)`` probabilities, summing to 1 (closed form, integral or Monte Carlo)."""
        probs = self._probabilities
        if probs is None:
            assert self._compute is not None
            probs = self._probabilities = self._compute()
        return probs

    def __repr__(self) -> str:
        return f"Choice(index={self.index}, exact={self.exact})"


class Decision:
    """The outcome of :meth:`Loop.rank`.

    ``probability`` is the true propensity of the chosen action under the policy: exact
    (closed form or a one-dimensional integral, see ``docs/design.md``) for every strategy but
    ``thompson-dropout``, which estimates it by Monte Carlo (``exact`` is then False).
    ``ranking`` lists every candidate, most likely first, with its probability and predicted
    reward. Both are computed on first access.
    """

    __slots__ = ("_means", "_ranking", "action", "action_ids", "choice", "event_id", "logged",
                 "loop", "model_version")

    def __init__(self, loop: str, event_id: str, action: Action, choice: Choice,
                 action_ids: Sequence[str], means: Sequence[float] | FloatArray,
                 model_version: int, *, logged: bool = True) -> None:
        self.loop = loop
        self.event_id = event_id
        self.action = action
        self.choice = choice
        self.action_ids = action_ids
        self._means = means  # predicted rewards, in the loop's reward range
        self.model_version = model_version
        self.logged = logged
        self._ranking: tuple[RankedAction, ...] | None = None

    @property
    def action_id(self) -> str:
        return self.action.id

    @property
    def probability(self) -> float:
        """The chosen action's propensity."""
        return float(self.choice.probabilities[self.choice.index])

    @property
    def exact(self) -> bool:
        return self.choice.exact

    @property
    def ranking(self) -> tuple[RankedAction, ...]:
        """Every candidate: most likely to be chosen first, then by predicted reward."""
        if self._ranking is None:
            probs = self.choice.probabilities
            means = np.asarray(self._means, dtype=np.float64)
            order = np.lexsort((-np.nan_to_num(means, nan=-np.inf), -probs))
            self._ranking = tuple(RankedAction(self.action_ids[i], float(probs[i]),
                                               float(means[i])) for i in order)
        return self._ranking

    def __repr__(self) -> str:
        return (f"Decision(loop={self.loop!r}, event_id={self.event_id!r}, "
                f"action_id={self.action_id!r}, model_version={self.model_version})")


@dataclass
class DecisionRecord:
    """The logged decision: what counterfactual evaluation and the learner need."""

    event_id: str
    time: float
    context: dict[str, Any]
    action_ids: Sequence[str]
    choice: Choice
    model_version: int
    action: Action
    inputs: Any = field(repr=False, default=None)  # EncodedContext, memory only

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "time": self.time,
            "context": self.context,
            "actions": self.action_ids,
            "chosen": self.choice.index,
            "probabilities": [float(p) for p in self.choice.probabilities],
            "exact": self.choice.exact,
            "model_version": self.model_version,
            "action_features": dict(self.action.features),
        }
