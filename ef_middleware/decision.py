"""What a ranking returns, and what is logged about it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ._json import kept
from ._types import Float64Array, FloatArray
from .features import MAX_TEXT, Action


@dataclass(frozen=True)
class RankedAction:
    """One action of a ranking: its chance of being chosen and its predicted reward."""

    action_id: str
    probability: float
    predicted_reward: float


LAZY_PROPENSITIES: dict[str, Callable[..., FloatArray]] = {}
"""The functions that compute a :class:`Choice`'s probabilities on demand, by name (policies
register theirs): a choice names its function instead of holding it, so what the loop keeps
about a decision until it logs it is made of plain values only (see :meth:`Choice.state`)."""

Lazy = tuple[str, tuple[Any, ...]]
"""``(name in LAZY_PROPENSITIES, arguments)``: how to compute the probabilities later."""

ChoiceState = tuple[Any, ...]
"""A :class:`Choice` as one flat tuple of plain values: index, exact, probabilities (or
``None``), the lazy function's name (or ``None``), then its arguments."""


class Choice:
    """A policy's answer: the chosen index and every action's probability of being chosen.

    The choice is drawn on the request path; the probabilities may be computed on first use
    (``lazy``: a function of :data:`LAZY_PROPENSITIES` and its arguments), so a page view that
    only needs the chosen variant never pays for them. The learner reads them when it logs
    the decision. The function must be deterministic.
    """

    __slots__ = ("_probabilities", "exact", "index", "lazy")

    def __init__(self, index: int, probabilities: FloatArray | None = None, exact: bool = True,
                 lazy: Lazy | None = None) -> None:
        if probabilities is None and lazy is None:
            raise ValueError("a Choice needs probabilities or a way to compute them")
        if lazy is not None and lazy[0] not in LAZY_PROPENSITIES:
            raise ValueError(f"unknown propensity function {lazy[0]!r}")
        self.index = index
        self.exact = exact
        self._probabilities = probabilities
        self.lazy = lazy

    @classmethod
    def from_state(cls, state: ChoiceState) -> Choice:
        """The choice that :meth:`state` describes."""
        index, exact, probabilities, name = state[:4]
        return cls(index, probabilities, exact, None if name is None else (name, state[4:]))

    def state(self) -> ChoiceState:
        """This choice as one flat tuple of plain values (ints, floats, str, numpy arrays).

        The loop keeps this (inside its log entry), not the choice, until the learner logs the
        decision. The garbage collector stops tracking a tuple once its items are untracked
        (one level of nesting per collection); a tuple holding a dict or an instance stays
        tracked. A tracked object kept for a second reaches the oldest generation, and each
        full collection scans it until it goes.
        """
        lazy = self.lazy
        if lazy is None:
            return self.index, self.exact, self._probabilities, None
        return (self.index, self.exact, self._probabilities, lazy[0], *lazy[1])

    @property
    def gaussian(self) -> tuple[Float64Array, Float64Array] | None:
        """``(means, sds)`` of the independent Gaussian scores the choice was drawn from, when
        its probabilities are their win probabilities (``gaussian_probabilities``)."""
        if self.lazy is None or self.lazy[0] != "gaussian":
            return None
        mu, sigma = self.lazy[1][:2]
        return mu, sigma

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
            assert self.lazy is not None
            name, args = self.lazy
            probs = self._probabilities = LAZY_PROPENSITIES[name](*args)
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


LogEntry = tuple[Any, ...]
"""What a loop keeps of a decision until its learner logs it, one flat tuple of plain values:
event id, time, the context as JSON (bytes), the candidates' ids (a tuple shared by every
decision of a view), the chosen action's number in the loop's action table, model version, then
the choice's :meth:`Choice.state`."""


def log_record(entry: LogEntry, choice: Choice, action: Action) -> dict[str, Any]:
    """The logged decision (one JSON line of the decision log, for ``orjson.dumps``): what
    counterfactual evaluation needs. ``choice`` is ``Choice.from_state(entry[6:])``, its
    probabilities resolved or computed now; ``action`` is the chosen action."""
    event_id, time, context, action_ids, _, model_version = entry[:6]
    return {
        "event_id": event_id,
        "time": time,
        "context": orjson.Fragment(context),
        "actions": orjson.Fragment(action_ids),  # JSON already (Loop's view.ids_json)
        "chosen": choice.index,
        "probabilities": [float(p) for p in choice.probabilities],
        "exact": choice.exact,
        "model_version": model_version,
        "action_features": dict(action.features),
    }


def log_json(obj: Any) -> bytes:
    """``obj`` as JSON the way the decision log writes it: values JSON cannot hold (a
    ``Decimal``) as strings, numpy's numbers as numbers; ``orjson.JSONEncodeError`` for an
    int beyond 64 bits."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_SERIALIZE_NUMPY)


def context_json(context: Mapping[str, Any]) -> bytes:
    """The context as the decision log writes it (values JSON cannot hold become strings),
    right-sized: it waits with the decision until the learner logs it.

    Text values are cut to the :data:`~ef_middleware.features.MAX_TEXT` characters the model
    reads when the whole would pass :data:`MAX_CONTEXT_JSON` bytes (a megabyte value was
    kept in memory and logged whole)."""
    if not isinstance(context, dict):  # orjson writes other mappings as their repr
        context = dict(context)
    try:
        out = kept(log_json(context))
    except orjson.JSONEncodeError:  # an int beyond 64 bits: the standard library writes it
        out = json.dumps(context, default=str, ensure_ascii=False,
                         separators=(",", ":")).encode("utf-8")
    if len(out) > MAX_CONTEXT_JSON:
        cut = {key: _cut(value) for key, value in context.items()}
        if cut != context:
            return context_json(cut)
    return out


MAX_CONTEXT_JSON = 4096


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, list | tuple | set | frozenset):
        return [v[:MAX_TEXT] if isinstance(v, str) else v for v in value]
    return value
