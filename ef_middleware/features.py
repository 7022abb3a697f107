"""Contexts and actions to model input.

Text features become ``"key: value"`` strings, embedded once each (cached) and mean-pooled per
side; numbers stay numbers: ``hour`` and ``weekday`` become sin/cos pairs, other numbers and
booleans go to a numeric slot of their own and are standardised with running statistics that the
learner keeps (Welford's algorithm), so a count of 3 and a price of 3000 reach the network on the
same scale.
"""

from __future__ import annotations

import math
import numbers
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._types import Context, FloatArray
from .embedding import EmbeddingCache
from .errors import InvalidInputError
from .memo import Memo

MAX_TEXT = 200  # characters of a value that reach the embedder
# Action ids and event ids travel in the middleware's signed decision cookie, which a browser
# keeps up to about 4 KB.
MAX_ID = 128
# A context's features, and its text values (a list's items each): the first value of a key
# never seen runs the transformer at once (about 20 ms), so a context of thousands of new keys
# stalled one rank for minutes.
MAX_FEATURES = 128
MAX_TEXTS = 256
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a context number past it is refused
# Numbers: numpy's scalars and Fraction too (numbers.Real), with int and float first: the
# ABC's own check takes about 1.5 us here, a tuple's first hit 0.1 us.
_NUMBERS = (int, float, numbers.Real, np.bool_)  # numpy's bool is no numbers.Real
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
    """Accept an :class:`Action`, ``{"id": ..., "features": {...}}`` or a bare id string.

    An :class:`Action` built directly is checked as a mapping is (a review of 2026-12-05
    found ``Action(5)`` and features keyed by numbers raising a bare ``TypeError`` deep in
    ranking, and ``Action("")`` chosen); a feature whose value is ``None`` is left out, as in a
    context, not embedded as the text "None"."""
    if isinstance(value, Action):
        if not (isinstance(value.id, str) and value.id):
            raise InvalidInputError(f"an action's id is a non-empty string, not {value.id!r}")
        if not isinstance(value.features, Mapping) or not all(
                isinstance(k, str) for k in value.features):
            raise InvalidInputError(f"action {value.id!r}: 'features' must be a mapping with "
                                    "string keys")
        try:  # an action's key holds its features (a list there failed every rank)
            hash(tuple(value.features.values()))
        except TypeError:
            raise InvalidInputError(f"action {value.id!r}: feature values are strings, numbers "
                                    "or tuples of them, not lists or mappings") from None
        return value
    if isinstance(value, str) and value:
        return Action(value)
    if isinstance(value, Mapping) and isinstance(value.get("id"), str) and value["id"]:
        feats = value.get("features") or {}
        if not isinstance(feats, Mapping):
            raise InvalidInputError(f"action {value['id']!r}: 'features' must be a mapping")
        return Action(value["id"], {str(k): str(v) for k, v in feats.items() if v is not None})
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
    long = [i for i in ids if len(i) > MAX_ID]
    if long:
        raise InvalidInputError(f"an action id has at most {MAX_ID} characters: {long[0][:40]!r}"
                                f"... has {len(long[0])}")
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


def is_feature_value(value: object) -> bool:
    """Whether a context takes ``value`` as a feature: ``None``, a string, a number (bool and
    numpy's too) that is finite and within float32's range, or a list of strings (what
    :meth:`FeatureEncoder.context` accepts)."""
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, _NUMBERS):
        try:
            NumericSpace.checked("", value)
        except (InvalidInputError, TypeError, ValueError):
            return False
        return True
    return _text_list(value)


def _text_list(value: object) -> bool:
    """Whether ``value`` is a multi-valued text feature: a list (tuple, set) of strings."""
    return (isinstance(value, list | tuple | set | frozenset)
            and all(isinstance(v, str) for v in value))


class RunningScaler:
    """Per-dimension running mean and variance (Chan et al.'s parallel Welford) and the
    standardisation they give: ``(x - mean) / std``.

    A dimension's standard deviation is floored at ``min_std``, so a direction the data have
    barely moved along is not blown up for a vector that moves along it. Only the learner
    updates the statistics; ranking reads :attr:`scale`, swapped atomically.
    """

    def __init__(self, dim: int, *, min_std: float = 1e-3) -> None:
        self.dim = dim
        self.min_std = min_std
        self.count = np.zeros(dim, dtype=np.float64)
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)
        self.scale: tuple[FloatArray, FloatArray] = (np.zeros(dim, np.float32),
                                                     np.ones(dim, np.float32))
        self._publish()

    def update(self, values: FloatArray, mask: FloatArray | None = None) -> None:
        """Fold rows ``values`` (N, dim) in; ``mask`` marks the entries present (default all)."""
        if values.shape[0] == 0:
            return
        on = np.ones(values.shape, dtype=bool) if mask is None else mask > 0
        # Chan et al.'s parallel update: combine the batch's count, mean and M2 with ours.
        n_b = on.sum(axis=0).astype(np.float64)
        x = np.where(on, values, 0.0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(n_b > 0, x.sum(axis=0) / np.maximum(n_b, 1), 0.0)
        m2_b = (np.where(on, values - mean_b, 0.0) ** 2).sum(axis=0)
        total = self.count + n_b
        delta = mean_b - self.mean
        safe = np.maximum(total, 1)
        self.mean += delta * n_b / safe
        self.m2 += m2_b + delta**2 * self.count * n_b / safe
        self.count = total
        self._publish()

    def _publish(self) -> None:
        var = np.where(self.count > 1, self.m2 / np.maximum(self.count - 1.0, 1.0), 1.0)
        std = np.maximum(np.sqrt(var), self.min_std)
        self.scale = (self.mean.astype(np.float32), (1.0 / std).astype(np.float32))

    def standardise(self, values: FloatArray, mask: FloatArray | None = None,
                    clip: float = 5.0) -> FloatArray:
        """``(values - mean) / std``, clipped to +-``clip``, zero where ``mask`` is 0."""
        mean, inv_std = self.scale
        out: FloatArray = np.clip((values - mean) * inv_std, -clip, clip)
        if mask is not None:
            out *= mask
        return out

    def state(self) -> dict[str, Any]:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(),
                "m2": self.m2.tolist()}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.count = np.asarray(state["count"], dtype=np.float64)
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.m2 = np.asarray(state["m2"], dtype=np.float64)
        self._publish()


class NumericSpace:
    """Numeric slots of the model input and their running statistics.

    Keys get a slot when first seen; once every slot is taken, further keys share slots by hash.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.slots: dict[str, int] = {}
        self.scaler = RunningScaler(dim)
        self._lock = threading.Lock()

    def slot(self, name: str) -> int:
        index = self.slots.get(name)
        if index is None:
            with self._lock:
                index = self.slots.get(name)
                if index is None:
                    used = len(self.slots)
                    if used >= self.dim:  # shared by hash: nothing to remember
                        return zlib.crc32(name.encode()) % self.dim
                    index = self.slots[name] = used
        return index

    def raw(self, context: Context) -> tuple[FloatArray, FloatArray]:
        """Return the raw numeric values of ``context`` and a 0/1 mask of the slots present."""
        values = np.zeros(self.dim, dtype=np.float32)
        mask = np.zeros(self.dim, dtype=np.float32)
        for key, value in context.items():
            if isinstance(value, _NUMBERS):
                self.put(str(key).strip().lower(), value, values, mask)
        return values, mask

    @staticmethod
    def checked(name: str, value: float | numbers.Real | np.bool_) -> float:
        """``value`` as a float, or ``InvalidInputError``: not finite, or past float32's range
        (the model's inputs are float32: 1e39 became inf there, and one such rank turned the
        running statistics, then every prediction of the loop, into NaN for good; a review
        of 2026-12-05)."""
        try:
            number = float(value)
        except OverflowError:  # an int past float's range
            number = math.inf
        if not math.isfinite(number):
            raise InvalidInputError(f"context feature {name!r} is not finite: {value!r}")
        if abs(number) > FLOAT32_MAX:
            raise InvalidInputError(f"context feature {name!r} is out of range (at most "
                                    f"{FLOAT32_MAX:.3g} in magnitude): {value!r}")
        return number

    def put(self, name: str, value: float | numbers.Real, values: FloatArray,
            mask: FloatArray) -> None:
        """Write number ``value`` of feature ``name`` into its slot(s) (booleans are 0/1)."""
        self.write(name, self.checked(name, value), values, mask)

    def write(self, name: str, number: float, values: FloatArray, mask: FloatArray) -> None:
        """:meth:`put` for a number :meth:`checked` already."""
        period = CYCLES.get(name)
        if period is None:
            i = self.slot(name)
            values[i], mask[i] = number, 1.0
            return
        angle = 2.0 * math.pi * (number % period) / period
        i, j = self.slot(f"{name}~sin"), self.slot(f"{name}~cos")
        values[i], values[j] = math.sin(angle), math.cos(angle)
        mask[i] = mask[j] = 1.0

    def standardise(self, values: FloatArray, mask: FloatArray) -> FloatArray:
        return self.scaler.standardise(values, mask)

    def update(self, values: FloatArray, mask: FloatArray) -> None:
        """Fold a batch of raw rows into the running statistics."""
        self.scaler.update(values, mask)

    def state(self) -> dict[str, Any]:
        return {"slots": self.slots, **self.scaler.state()}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.slots = {str(k): int(v) for k, v in state["slots"].items()}
        self.scaler.restore(state)


TEXT_SEPARATOR = "\x1f"  # joins a context's texts into one string (see Loop's waiting tuple)


def _clean(value: str) -> str:
    return value.strip()[:MAX_TEXT].replace(TEXT_SEPARATOR, " ")


def _clean_key(key: str) -> str:
    # The separator in a key split its text in two when the learner read the joined texts
    # back (a review of 2026-12-05).
    return key.strip().lower().replace(TEXT_SEPARATOR, " ")


def join_texts(texts: tuple[str, ...]) -> str:
    return TEXT_SEPARATOR.join(texts)


def split_texts(joined: str) -> tuple[str, ...]:
    return tuple(joined.split(TEXT_SEPARATOR)) if joined else ()


@dataclass
class EncodedContext:
    """A context as the model sees it: pooled text vector, raw numbers and their mask."""

    text: FloatArray
    numeric_raw: FloatArray
    numeric_mask: FloatArray
    provisional: bool = False  # a text was not embedded yet: its key's mean stands in
    texts: tuple[str, ...] = ()  # the "key: value" texts that were pooled


class FeatureEncoder:
    """Turns contexts and actions into vectors, through the embedding cache.

    Vectors of one side are mean-pooled. Pooled context vectors are kept per combination of
    texts in a bounded memo: visitors repeat (same device, browser, referrer...), and a hit
    skips the per-text lookups and the pooling.
    """

    def __init__(self, cache: EmbeddingCache, numeric: NumericSpace, *,
                 memo_size: int = 50_000) -> None:
        self.cache = cache
        self.numeric = numeric
        self.dim = cache.dim
        self._memo: Memo[tuple[str, ...], FloatArray] = Memo(memo_size)

    def pool(self, texts: Sequence[str], *, block: bool | None = None
             ) -> tuple[FloatArray, bool]:
        """Mean of the texts' unit vectors (zeros for none), and whether every text had its
        real vector (see :class:`~ef_middleware.embedding.EmbeddingCache`, ``background``)."""
        key = tuple(texts)
        pooled = self._memo.get(key)
        if pooled is not None:
            return pooled, True
        if not texts:
            return np.zeros(self.dim, dtype=np.float32), True
        vectors, complete = self.cache.lookup(texts, block=block)
        pooled = vectors.mean(axis=0, dtype=np.float32)
        if complete:
            self._memo.put(key, pooled)
        return pooled, complete

    def context(self, context: Context, *, block: bool | None = None) -> EncodedContext:
        """Validate ``context`` and encode it in one pass: texts pooled, numbers in slots.

        ``block`` as in :meth:`EmbeddingCache.get_many`."""
        if not isinstance(context, Mapping):
            raise InvalidInputError(f"a context is a mapping of feature names to values, not "
                                    f"{type(context).__name__}")
        if len(context) > MAX_FEATURES:
            raise InvalidInputError(f"a context has at most {MAX_FEATURES} features, not "
                                    f"{len(context)}")
        numeric = self.numeric
        texts: list[str] = []
        numbers: dict[str, float] = {}  # slotted only once the whole context is accepted
        for key, value in context.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"context keys must be strings, got {key!r}")
            if value is None:
                continue
            if isinstance(value, str):
                texts.append(f"{_clean_key(key)}: {_clean(value)}")
            elif isinstance(value, _NUMBERS):  # bool too
                name = key.strip().lower()
                if name in numbers:  # "Hour" and "hour": one slot, a value would be lost
                    raise InvalidInputError(f"context feature {key!r} is {name!r} again: "
                                            "names are compared lower-cased and stripped")
                numbers[name] = numeric.checked(name, value)
            elif _text_list(value):
                name = _clean_key(key)
                texts.extend(f"{name}: {_clean(v)}" for v in value)
            else:
                raise InvalidInputError(
                    f"context feature {key!r} has unsupported type {type(value).__name__}: use "
                    "str, int, float, bool, None or a list of str"
                )
        if len(texts) > MAX_TEXTS:
            raise InvalidInputError(f"a context has at most {MAX_TEXTS} text values (lists "
                                    f"count each item), not {len(texts)}")
        # A refused context takes no slot (a review of 2026-12-05: a rank refused for its
        # last feature had given its numbers slots, and a later real feature shared one).
        values = np.zeros(numeric.dim, dtype=np.float32)
        mask = np.zeros(numeric.dim, dtype=np.float32)
        for name, number in numbers.items():
            numeric.write(name, number, values, mask)
        pooled, complete = self.pool(texts, block=block)
        return EncodedContext(pooled, values, mask, provisional=not complete,
                              texts=tuple(texts))

    def actions(self, actions: Sequence[Action], *, block: bool | None = True
                ) -> tuple[FloatArray, list[bool]]:
        """Pooled text vectors of ``actions``, one row each, and whether each had its real
        vectors (``block`` as in :meth:`EmbeddingCache.get_many`)."""
        out = np.empty((len(actions), self.dim), dtype=np.float32)
        texts = [action.texts() for action in actions]
        if len(texts) > 1 and (block or (block is None and not self.cache.background)):
            # Where this call encodes, the texts no action's pooled vector is memoised for are
            # looked up (the unseen ones encoded) in one call, which the embedder takes 64 at a
            # time, not one call per action (a loop of 1,000 new actions took 9 s;
            # docs/benchmarks.md, "Creating a loop"). Elsewhere it would read the store twice
            # a text (a review of 2026-12-05).
            unseen = {t: None for each in texts if tuple(each) not in self._memo for t in each}
            if len(unseen) > 1:
                self.cache.lookup(list(unseen), block=block)
        complete = []
        for i, each in enumerate(texts):
            out[i], done = self.pool(each, block=block)
            complete.append(done)
        return out, complete
