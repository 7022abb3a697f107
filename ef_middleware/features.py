"""Contexts and actions to model input.

Text features become ``"key: value"`` strings, embedded once each (cached) and mean-pooled per
side; numbers stay numbers: ``hour`` and ``weekday`` become sin/cos pairs, other numbers and
booleans go to a numeric slot of their own and are standardised with running statistics that the
learner keeps (Welford's algorithm), so a count of 3 and a price of 3000 reach the network on the
same scale.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._types import Context, FloatArray
from .embedding import EmbeddingCache
from .errors import InvalidInputError

MAX_TEXT = 200  # characters of a value that reach the embedder
CYCLES = {"hour": 24.0, "weekday": 7.0}  # numeric keys encoded on a circle


@dataclass(frozen=True)
class Action:
    """One variant a loop can choose: an id and the text features that describe it."""

    id: str
    features: Mapping[str, str] = field(default_factory=dict)

    def texts(self) -> list[str]:
        """The strings embedded for this action (its id is always one of them)."""
        items = [f"variant: {self.id}"]
        items.extend(_text_items(self.features, numbers_as_text=True))
        return items


def to_action(value: Any) -> Action:
    """Accept an :class:`Action`, ``{"id": ..., "features": {...}}`` or a bare id string."""
    if isinstance(value, Action):
        return value
    if isinstance(value, str) and value:
        return Action(value)
    if isinstance(value, Mapping) and isinstance(value.get("id"), str) and value["id"]:
        feats = value.get("features") or {}
        if not isinstance(feats, Mapping):
            raise InvalidInputError(f"action {value['id']!r}: 'features' must be a mapping")
        return Action(value["id"], {str(k): str(v) for k, v in feats.items()})
    raise InvalidInputError(
        f"an action is an id string or {{'id': str, 'features': {{...}}}}, not {value!r}"
    )


def to_actions(values: Iterable[Any]) -> list[Action]:
    """Validate a list of actions: at least one, ids unique."""
    if isinstance(values, str | bytes | Mapping):
        raise InvalidInputError("actions must be a list of actions, not a single value")
    actions = [to_action(v) for v in values]
    if not actions:
        raise InvalidInputError("a loop needs at least one action")
    ids = [a.id for a in actions]
    if len(set(ids)) != len(ids):
        raise InvalidInputError(f"action ids must be unique, got {ids}")
    return actions


def _text_items(features: Mapping[str, Any], *, numbers_as_text: bool) -> list[str]:
    items: list[str] = []
    for key, value in features.items():
        if value is None:
            continue
        name = str(key).strip().lower()
        if isinstance(value, str):
            items.append(f"{name}: {value.strip()[:MAX_TEXT]}")
        elif isinstance(value, list | tuple | set | frozenset):
            items.extend(f"{name}: {str(v).strip()[:MAX_TEXT]}" for v in value)
        elif numbers_as_text and isinstance(value, int | float):
            items.append(f"{name}: {value}")
    return items


class NumericSpace:
    """Numeric slots of the model input and their running mean and variance.

    Keys get a slot when first seen; once every slot is taken, further keys share slots by hash.
    Only the learner updates the statistics; ranking reads the published arrays.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.slots: dict[str, int] = {}
        self.count = np.zeros(dim, dtype=np.float64)
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)
        self._lock = threading.Lock()
        self.scale = (np.zeros(dim, np.float32), np.ones(dim, np.float32))  # (mean, 1/std)

    def slot(self, name: str) -> int:
        index = self.slots.get(name)
        if index is None:
            with self._lock:
                index = self.slots.get(name)
                if index is None:
                    used = len(self.slots)
                    index = used if used < self.dim else zlib.crc32(name.encode()) % self.dim
                    self.slots[name] = index
        return index

    def raw(self, context: Context) -> tuple[FloatArray, FloatArray]:
        """Return the raw numeric values of ``context`` and a 0/1 mask of the slots present."""
        values = np.zeros(self.dim, dtype=np.float32)
        mask = np.zeros(self.dim, dtype=np.float32)
        for key, value in context.items():
            if isinstance(value, bool):
                number = 1.0 if value else 0.0
            elif isinstance(value, int | float):
                number = float(value)
                if not math.isfinite(number):
                    raise InvalidInputError(f"context feature {key!r} is not finite: {value!r}")
            else:
                continue
            name = str(key).strip().lower()
            period = CYCLES.get(name)
            if period is None:
                pairs = [(name, number)]
            else:
                angle = 2.0 * math.pi * (number % period) / period
                pairs = [(f"{name}~sin", math.sin(angle)), (f"{name}~cos", math.cos(angle))]
            for slot_name, v in pairs:
                i = self.slot(slot_name)
                values[i] = v
                mask[i] = 1.0
        return values, mask

    def standardise(self, values: FloatArray, mask: FloatArray) -> FloatArray:
        mean, inv_std = self.scale
        out: FloatArray = np.clip((values - mean) * inv_std, -5.0, 5.0) * mask
        return out

    def update(self, values: FloatArray, mask: FloatArray) -> None:
        """Fold a batch of raw rows into the running statistics (Welford, per slot)."""
        for row, present in zip(values, mask, strict=True):
            on = present > 0
            self.count[on] += 1.0
            delta = row[on] - self.mean[on]
            self.mean[on] += delta / self.count[on]
            self.m2[on] += delta * (row[on] - self.mean[on])
        var = np.where(self.count > 1, self.m2 / np.maximum(self.count - 1, 1), 1.0)
        std = np.sqrt(np.maximum(var, 1e-6))
        self.scale = (self.mean.astype(np.float32), (1.0 / std).astype(np.float32))

    def state(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "count": self.count.tolist(),
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.slots = {str(k): int(v) for k, v in state["slots"].items()}
        self.count = np.asarray(state["count"], dtype=np.float64)
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.m2 = np.asarray(state["m2"], dtype=np.float64)
        self.update(np.zeros((0, self.dim), np.float32), np.zeros((0, self.dim), np.float32))


@dataclass
class EncodedContext:
    """A context as the model sees it: pooled text vector, raw numbers and their mask."""

    text: FloatArray
    numeric_raw: FloatArray
    numeric_mask: FloatArray


class FeatureEncoder:
    """Turns contexts and actions into vectors, through the embedding cache.

    ``scale`` multiplies the pooled (mean) embedding: unit-norm 384-d vectors have entries of
    about 0.05, far below the unit scale Xavier initialisation expects, so they are scaled up.
    """

    def __init__(self, cache: EmbeddingCache, numeric: NumericSpace, *, scale: float) -> None:
        self.cache = cache
        self.numeric = numeric
        self.scale = np.float32(scale)
        self.dim = cache.dim

    def pool(self, texts: Sequence[str]) -> FloatArray:
        if not texts:
            return np.zeros(self.dim, dtype=np.float32)
        vectors = self.cache.get_many(texts)
        pooled: FloatArray = (vectors.mean(axis=0) * self.scale).astype(np.float32)
        return pooled

    def context(self, context: Context) -> EncodedContext:
        if not isinstance(context, Mapping):
            raise InvalidInputError(f"a context is a mapping of feature names to values, not "
                                    f"{type(context).__name__}")
        for key, value in context.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"context keys must be strings, got {key!r}")
            if not (value is None or isinstance(value, str | int | float | bool)
                    or (isinstance(value, list | tuple | set | frozenset)
                        and all(isinstance(v, str) for v in value))):
                raise InvalidInputError(
                    f"context feature {key!r} has unsupported type {type(value).__name__}: use "
                    "str, int, float, bool, None or a list of str"
                )
        raw, mask = self.numeric.raw(context)
        return EncodedContext(self.pool(_text_items(context, numbers_as_text=False)), raw, mask)

    def actions(self, actions: Sequence[Action]) -> FloatArray:
        """Pooled text vectors of ``actions``, one row each."""
        out = np.empty((len(actions), self.dim), dtype=np.float32)
        for i, action in enumerate(actions):
            out[i] = self.pool(action.texts())
        return out
