"""The learning side of one loop: network, replay buffer, input scaling, posterior, snapshots.

Only the learner thread calls a :class:`Trainer` (ranking reads the :class:`ServingState` it
publishes), so none of this is on the request path.

How much to train is set per sample, not per call: every learned sample adds its replay ratio
to a budget, and each optimiser step spends ``batch_size`` of it on the new samples plus samples
drawn from the replay buffer. A sample is thus visited about ``replay_ratio`` times while it is
in the buffer, whether rewards arrive one by one or a thousand at once (unless more wait than
``replay_backlog``: then the learner is behind and sheds replay until it has caught up). A
small ratio matters on noisy rewards: replaying each conversion hundreds of times teaches the
network the noise. A young loop takes smaller steps (``min_batch_size``) so its first few
hundred visitors already move the model (docs/design.md, "Learning").
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from ._json import kept_json
from ._types import Context, FloatArray, IntArray
from .correction import Correction
from .counts import ActionCounts
from .features import Action, EncodedContext, FeatureEncoder, NumericSpace, RunningScaler
from .gain import FreshGain
from .memo import Memo
from .model import FactoredInput, RewardNet, ServingModel, layer_views
from .posterior import LaplacePosterior, LinearPosterior, PosteriorSnapshot, with_bias
from .priority import yield_to_requests
from .settings import LoopSettings
from .store import Store
from .throttle import Throttle

log = logging.getLogger("ef_middleware")
KEEP_VERSIONS = 3
ACTION_ROWS = 64  # rows of an action table before its first doubling
EMBEDDING_WARN_EVERY = 60.0  # seconds between two warnings of learning from stand-ins
ACTION_TABLE_LIMIT = 20_000  # rows (1.5 KB each) past which the learner compacts the table
ActionKey = tuple[str, tuple[tuple[str, str], ...]]
POSTERIORS = {"laplace": LaplacePosterior, "ucb": LaplacePosterior,
              "neural-linear": LinearPosterior}


@dataclass(frozen=True)
class ServingState:
    """Everything ranking reads, swapped as one reference when the learner publishes."""

    model: ServingModel
    actions: tuple[Action, ...]
    index: dict[str, int]  # action id -> position; its keys in order are the ids
    rows: FloatArray  # (K, hidden[0]) action half of layer 1
    counts: FloatArray  # (K,) learned decisions per action
    successes: FloatArray  # (K,) summed normalised rewards per action
    posterior: PosteriorSnapshot | None
    text_scale: tuple[FloatArray, FloatArray]  # context text standardisation (mean, 1/std)
    learned: int  # samples learned so far
    correction: Correction | None  # live: the learner updates it between publications
    offset_rows: dict[str, FloatArray] = field(default_factory=dict)  # for the own actions

    @property
    def version(self) -> int:
        return self.model.version

    @cached_property
    def ids(self) -> tuple[str, ...]:
        """The actions' ids in order, built once per published state, not per ranking."""
        return tuple(self.index)

    @cached_property
    def ids_json(self) -> bytes:
        """:attr:`ids` as JSON (the decision log's ``actions``), once per published state."""
        return kept_json(self.ids)


@dataclass
class Sample:
    """One finalised decision, ready to learn: inputs, chosen action and normalised reward."""

    inputs: EncodedContext
    action: Action
    reward: float
    context: Context | None = None  # to encode again if ``inputs`` were provisional
    logit: float = 0.0  # the network's logit for the action when it was chosen


class _Numbering:
    """One numbering of the action table's rows: the index by key and the vectors it numbers.
    Rows are only appended to a numbering; a compaction makes a new one."""

    __slots__ = ("buffer", "index", "keys", "provisional", "vectors")

    def __init__(self, rows: int, dim: int) -> None:
        self.buffer = np.zeros((rows, dim), dtype=np.float32)
        self.vectors: FloatArray = self.buffer[:0]
        self.index: dict[ActionKey, int] = {}
        self.keys: list[ActionKey] = []  # by row
        self.provisional: dict[int, Action] = {}  # rows whose texts' means stand in


class ActionTable:
    """The actions the loop has learned about: their pooled, scaled text vectors, by row.

    Row numbers are stable between compactions (the replay buffer keeps them). The rows live
    in a buffer that doubles when full, and :attr:`vectors` is a view of its filled part.
    Appending to an array of exactly the filled size copied the whole table for each new
    action: 23.5 ms per new action once 40,000 were known (a lab run with a stand-in
    embedder), against 2.3 ms at 1,000.

    The learner adds a row per new action it learns; per-call action lists (a catalogue whose
    prices change, the day's articles) bring new ones for as long as a site runs, so past
    ``ACTION_TABLE_LIMIT`` rows it keeps only the rows its replay buffer names
    (:meth:`compact`): an action learned again later gets a new row. The request path does
    not read the table (:meth:`Trainer.action_rows`).
    """

    def __init__(self, encoder: FeatureEncoder, scale: float,
                 failed: Callable[[Exception], None] = lambda exc: None) -> None:
        self._encoder = encoder
        self.scale = np.float32(scale)
        self._failed = failed  # told when texts could not be embedded (stand-ins kept)
        self._lock = threading.Lock()  # a loop's publication and its learner may both add
        self._numbering = _Numbering(ACTION_ROWS, encoder.dim)

    @property
    def vectors(self) -> FloatArray:
        """The rows' vectors, by row number."""
        return self._numbering.vectors

    def __len__(self) -> int:
        return int(self._numbering.vectors.shape[0])

    def rows(self, actions: Sequence[Action]) -> IntArray:
        """Row of each action, embedding the new ones (on the caller's thread; during a flood
        of new texts the embedding cache may give their keys' means instead: such a row is
        overwritten by the first later call that finds the real vectors)."""
        numbering = self._numbering
        out = np.empty(len(actions), dtype=np.int64)
        for i, action in enumerate(actions):
            row = numbering.index.get(action_key(action))
            if row is None:
                return self._add(actions, out)
            out[i] = row
        if numbering.provisional:
            self._refresh(numbering, out.tolist())  # it skips the rows that are not stand-ins
        return out

    def refresh(self) -> None:
        """Overwrite the stand-in rows whose texts' vectors the embedding cache now has (the
        learner, each pass: a row learned from stand-ins was replayed with them until the
        action was learned again, a review of 2026-12-05 found). Encodes nothing."""
        numbering = self._numbering
        if numbering.provisional:
            self._refresh(numbering, list(numbering.provisional), block=False)

    def _refresh(self, numbering: _Numbering, rows: list[int], block: bool = True) -> None:
        for row in rows:
            stand_in = numbering.provisional.get(row)
            if stand_in is None:
                continue
            try:
                vectors, complete = self._encoder.actions([stand_in], block=block)
            except Exception as exc:  # the stand-in stays, for a later call
                self._failed(exc)
                continue
            if complete[0]:
                with self._lock:
                    if numbering.provisional.pop(row, None) is not None:
                        numbering.buffer[row] = vectors[0] * self.scale

    def vectors_of(self, actions: Sequence[Action]) -> FloatArray:
        rows = self.rows(actions)  # first: it may grow the table
        out: FloatArray = self.vectors[rows]
        return out

    def compact(self, keep: IntArray) -> IntArray:
        """Keep only the rows ``keep`` (sorted, distinct), renumbered 0, 1, ... in that order;
        returns the new number of each old row (-1 for a row dropped). The caller renumbers
        what holds row numbers (the replay buffer)."""
        with self._lock:
            old = self._numbering
            size = old.vectors.shape[0]
            new = _Numbering(max(ACTION_ROWS, 2 * keep.size), old.buffer.shape[1])
            new.buffer[:keep.size] = old.buffer[keep]
            new.vectors = new.buffer[:keep.size]
            new.keys = [old.keys[row] for row in keep.tolist()]
            new.index = {key: j for j, key in enumerate(new.keys)}
            new.provisional = {j: old.provisional[row] for j, row in enumerate(keep.tolist())
                               if row in old.provisional}
            self._numbering = new
        renumbered: IntArray = np.full(size, -1, dtype=np.int64)
        renumbered[keep] = np.arange(keep.size, dtype=np.int64)
        return renumbered

    def _add(self, actions: Sequence[Action], out: IntArray) -> IntArray:
        with self._lock:
            numbering = self._numbering
            new: list[tuple[int, Action]] = []
            for i, action in enumerate(actions):
                row = numbering.index.get(action_key(action))
                if row is None:
                    new.append((i, action))
                else:
                    out[i] = row
            if not new:
                return out
            try:
                vectors, complete = self._encoder.actions([a for _, a in new], block=True)
            except Exception as exc:  # stand-ins (their keys' means) until a later call
                self._failed(exc)
                vectors, complete = self._encoder.actions([a for _, a in new], block=False)
            start = numbering.vectors.shape[0]
            end = start + len(new)
            if end > numbering.buffer.shape[0]:  # full: double (a reader's view keeps the old)
                grown = np.zeros((max(end, 2 * numbering.buffer.shape[0]),
                                  numbering.buffer.shape[1]), dtype=np.float32)
                grown[:start] = numbering.buffer[:start]
                numbering.buffer = grown
            numbering.buffer[start:end] = vectors * self.scale
            for j, (_, action) in enumerate(new):
                if not complete[j]:
                    numbering.provisional[start + j] = action
            numbering.vectors = numbering.buffer[:end]
            for j, (i, action) in enumerate(new):
                key = action_key(action)
                numbering.keys.append(key)
                numbering.index[key] = out[i] = start + j
            return out


class Replay:
    """A ring buffer of recent samples: context text, raw numbers, action row, target."""

    def __init__(self, capacity: int, text_dim: int, numeric_dim: int) -> None:
        self.text = np.zeros((capacity, text_dim), dtype=np.float32)
        self.raw = np.zeros((capacity, numeric_dim), dtype=np.float32)
        self.mask = np.zeros((capacity, numeric_dim), dtype=np.float32)
        self.action = np.zeros(capacity, dtype=np.int64)
        self.y = np.zeros(capacity, dtype=np.float32)
        self.size = 0
        self.head = 0

    @property
    def capacity(self) -> int:
        return int(self.y.shape[0])

    def add(self, text: FloatArray, raw: FloatArray, mask: FloatArray, action: IntArray,
            y: FloatArray) -> IntArray:
        """Append rows; return the slots they went to."""
        slots: IntArray = (self.head + np.arange(y.shape[0])) % self.capacity
        self.text[slots], self.raw[slots], self.mask[slots] = text, raw, mask
        self.action[slots], self.y[slots] = action, y
        self.head = int((self.head + y.shape[0]) % self.capacity)
        self.size = min(self.size + y.shape[0], self.capacity)
        return slots

    def draw(self, rng: np.random.Generator, n: int, mean_age: float | None) -> IntArray:
        """Slots of ``n`` samples to replay: uniform over the buffer, or (``mean_age``) with
        exponentially distributed ages, folded back into the buffer when they overshoot."""
        if mean_age is None:
            uniform: IntArray = rng.integers(0, self.size, size=n)
            return uniform
        ages = rng.exponential(mean_age, size=n).astype(np.int64) % self.size
        out: IntArray = (self.head - 1 - ages) % self.capacity
        return out

    def recent(self, n: int) -> IntArray:
        """Slots of the ``n`` most recent samples."""
        n = min(n, self.size)
        out: IntArray = (self.head - 1 - np.arange(n)) % self.capacity
        return out


class Trainer:
    """Trains one loop's network from finalised samples and publishes serving states."""

    def __init__(self, name: str, settings: LoopSettings, encoder: FeatureEncoder,
                 store: Store, seed: int) -> None:
        self.name = name
        self.settings = settings
        self.encoder = encoder
        self.store = store
        cfg = settings.model
        self.net = RewardNet(cfg, seed=seed)
        self.rng = np.random.default_rng(seed + 1)
        self.replay = Replay(settings.replay_size, cfg.text_dim, cfg.numeric_dim)
        self.actions = ActionTable(encoder, settings.embedding_scale, self._embedding_failed)
        # per-call actions' scaled vectors
        self._pooled: Memo[ActionKey, FloatArray] = Memo(ACTION_TABLE_LIMIT)
        # Pooled context vectors share a large common part (every "device: ..." text is alike)
        # and differ by small amounts; standardising each dimension puts those differences at
        # unit scale, which made the network learn Mushroom's edibility several times faster
        # (docs/design.md, "Model input").
        self.text_scaler = RunningScaler(cfg.text_dim)
        kind = POSTERIORS.get(settings.strategy)
        self.posterior = kind(cfg.hidden[-1] + 1) if kind is not None else None
        self.counts = ActionCounts(settings.count_half_life)  # per action, for exploration
        rate = settings.correction_rate or 0.0  # resolved by LoopSettings: never None here
        self.correction = (Correction(rate, half_life=settings.correction_half_life)
                           if rate > 0 else None)
        self.fresh_gain = FreshGain()  # the network on samples before it learns them
        self.learned = 0
        self.stand_ins_learned = 0  # samples learned from stand-ins (a flood, a failing embedder)
        self._embedding_warnings = Throttle(EMBEDDING_WARN_EVERY)
        self._snapshot_warnings = Throttle(EMBEDDING_WARN_EVERY)
        self._credit = 0.0
        self._fresh: list[int] = []  # replay slots not yet in a gradient step
        self._since_rebuild = 0
        self._steps_since_snapshot = 0
        self._versions: list[int] | None = None  # saved snapshots, oldest first (read lazily)
        # (step, samples learned) of the model the store holds for this process: the fresh
        # model's until a restore or a save (a fresh start rebuilds that one)
        self._as_saved = (0, 0)

    # -- inputs ----------------------------------------------------------------------------
    def inputs(self, slots: IntArray) -> FactoredInput:
        """Model input for replay ``slots``, with the current input scaling."""
        r = self.replay
        text = self.text_scaler.standardise(r.text[slots])
        numeric = self.encoder.numeric.standardise(r.raw[slots], r.mask[slots])
        distinct, index = np.unique(r.action[slots], return_inverse=True)
        return FactoredInput(text, self.actions.vectors[distinct], index.astype(np.int64),
                             numeric)

    def served(self, x: FactoredInput) -> tuple[FloatArray, FloatArray]:
        """Last-hidden features (with bias) and predictions of the *served* weights."""
        layers = layer_views(self.net.config, self.net.average)
        w1, b1 = layers[0]
        h = np.maximum(x.project(w1) + b1, 0.0)
        for w, b in layers[1:-1]:
            h = np.maximum(h @ w + b, 0.0)
        w_out, b_out = layers[-1]
        logits = (h @ w_out)[:, 0] + b_out[0]
        predicted: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * logits))
        return with_bias(h), predicted

    # -- learning --------------------------------------------------------------------------
    def learn(self, samples: Sequence[Sample], replay_ratio: float) -> int:
        """Add ``samples`` to the buffer and spend their training budget (``replay_ratio``
        gradient visits each: the loop's, or less while the learner is behind); returns the
        number of optimiser steps taken."""
        n = len(samples)
        if n == 0:
            return 0
        waiting = [(s, s.context) for s in samples
                   if s.inputs.provisional and s.context is not None]
        if len(waiting) > 1:  # one encode for the chunk's new texts, not one per sample
            texts = list(dict.fromkeys(t for s, _ in waiting for t in s.inputs.texts))
            try:
                self.encoder.cache.get_many(texts, block=True)
            except Exception as exc:  # each sample below has its own try
                self._embedding_failed(exc)
        for s, context in waiting:  # learn from the real vectors of texts new at ranking
            try:
                s.inputs = self.encoder.context(context, block=True)
            except Exception as exc:  # learnt from its stand-ins, as during a flood
                self._embedding_failed(exc)
            self.stand_ins_learned += s.inputs.provisional
        text = np.stack([s.inputs.text for s in samples]).astype(np.float32)
        raw = np.stack([s.inputs.numeric_raw for s in samples]).astype(np.float32)
        mask = np.stack([s.inputs.numeric_mask for s in samples]).astype(np.float32)
        y = np.array([s.reward for s in samples], dtype=np.float32)
        own = len(self.counts.kept)  # the loop's actions at the last publication
        limit = max(ACTION_TABLE_LIMIT, 2 * (self.replay.capacity + own))
        if len(self.actions) > limit:
            self._compact_actions()
        self.actions.refresh()
        rows = self.actions.rows([s.action for s in samples])
        self.text_scaler.update(text)
        self.encoder.numeric.update(raw, mask)
        slots = self.replay.add(text, raw, mask, rows, y)
        self._fresh.extend(int(i) for i in slots)
        for s in samples:
            self.counts.add(s.action.id, s.reward)
        if self.correction is not None:
            for i, s in enumerate(samples, 1):
                self.correction.update(s.inputs.texts, s.action.id, s.logit, s.reward)
                if i % 64 == 0:  # about 0.2 ms of Python: let a request take the lock
                    yield_to_requests()
        steps = self._train(n, replay_ratio)
        self.learned += n
        self._update_posterior(slots)
        if self._steps_since_snapshot >= self.settings.snapshot_every:
            try:
                self.save()
            except Exception as exc:
                # The chunk is learned and is served: a snapshot that cannot be written (a
                # full disk) is the next one's job. It used to fail the chunk, which was
                # counted as dropped and not published (a review of 2026-12-05).
                if self._snapshot_warnings.allow() is not None:
                    log.warning("loop %r: the model snapshot could not be written, the next "
                                "is tried %d updates later (%s: %s; one warning a minute)",
                                self.name, self.settings.snapshot_every, type(exc).__name__,
                                " ".join(str(exc).split()))
        return steps

    def _embedding_failed(self, exc: Exception) -> None:
        """A sample's or an action's texts could not be embedded: it is learned from the
        stand-ins it was ranked with (one failing text dropped its whole chunk of 256
        samples, an audit of 2026-12-05); one warning a minute at most."""
        if self._embedding_warnings.allow() is not None:
            log.warning("loop %r: learning from stand-in vectors, the embedder failed (%s: "
                        "%s; one warning a minute)", self.name, type(exc).__name__, exc)

    def _compact_actions(self) -> None:
        """Keep the action rows the replay buffer names, and renumber its samples."""
        named = self.replay.action[:self.replay.size]
        renumbered = self.actions.compact(np.unique(named))
        named[:] = renumbered[named]

    def _train(self, n: int, replay_ratio: float) -> int:
        cfg = self.settings
        self._credit += replay_ratio * n
        size = min(cfg.batch_size, max(cfg.min_batch_size, (self.learned + n) // 4))
        steps = 0
        while self._credit >= size:
            self._credit -= size
            fresh = np.asarray(self._fresh[:size], dtype=np.int64)
            del self._fresh[:size]
            drawn = self.replay.draw(self.rng, size - fresh.size, cfg.replay_recency)
            batch = np.concatenate([fresh, drawn])
            self.net.train_batch(self.inputs(batch), self.replay.y[batch])
            # the fresh rows come first, and the step's forward saw them before learning them
            self.fresh_gain.add(self.net.logits[:fresh.size], self.replay.y[fresh])
            steps += 1
            yield_to_requests()
        if len(self._fresh) > size:
            # Only a replay_ratio below 1 leaves more than a step's worth: its steps cannot
            # afford every new sample, and those the credit did not buy stay in the buffer for
            # replay. Kept here, they grew the list without bound (a leak) and came back as
            # slots the buffer had since overwritten. With a ratio of 1 or more the steps
            # always take every new sample, so this never drops one.
            del self._fresh[:-size]
        self._steps_since_snapshot += steps
        return steps

    def _update_posterior(self, slots: IntArray) -> None:
        if self.posterior is None:
            return
        self._since_rebuild += slots.size
        window = self.settings.posterior_window
        # A restored posterior holds more than an emptied buffer: rebuild once it refilled.
        refilled = self.replay.size >= min(window, self.learned)
        if self._since_rebuild >= self.settings.posterior_every and refilled:
            self._since_rebuild = 0
            slots = self.replay.recent(self.settings.posterior_window)
            phi, predicted = self.served(self.inputs(slots))
            self.posterior.rebuild(phi, predicted, self.replay.y[slots])
        else:
            phi, predicted = self.served(self.inputs(slots))
            self.posterior.update(phi, predicted, self.replay.y[slots])

    # -- publishing ------------------------------------------------------------------------
    def publish(self, actions: Sequence[Action]) -> ServingState:
        """A fresh serving state: served weights, action rows, counts, posterior, scaling."""
        model = ServingModel(self.net.config, self.net.average, version=self.net.step)
        self.counts.kept = frozenset(a.id for a in actions)  # the loop's own (ids unique)
        rows = model.project_actions(self.actions.vectors_of(actions))
        stats = [self.counts.get(a.id) for a in actions]
        counts = np.array([count for count, _ in stats], np.float32)
        succ = np.array([summed for _, summed in stats], np.float32)
        post = self.posterior.snapshot() if self.posterior is not None else None
        return ServingState(model, tuple(actions), {a.id: i for i, a in enumerate(actions)},
                            np.ascontiguousarray(rows), counts, succ, post,
                            self.text_scaler.scale, self.learned, self.correction)

    def action_rows(self, actions: Sequence[Action], model: ServingModel
                    ) -> tuple[FloatArray, list[bool]]:
        """Layer-1 action rows of ``actions`` under ``model`` (for per-call action lists),
        and whether each is final: a new action's texts are not embedded on the request
        path (a stand-in of their keys' means), and its row is not final until they are.
        The actions not in the memo are pooled in one call (their new texts go to the
        embedder together).

        The request path reads the actions' pooled vectors from a memo of its own, not from
        the learner's table: a per-call list offers many pairs of id and features that are
        never chosen, and the table would keep a row for each until the learner compacts it
        (in a lab run with the learner behind, 97,702 rows against a limit of 20,000), and a
        new action would wait for the table's lock behind another's encode."""
        memo = self._pooled
        out = np.empty((len(actions), self.encoder.dim), dtype=np.float32)
        final = [True] * len(actions)
        missing: list[tuple[int, ActionKey, Action]] = []
        for i, action in enumerate(actions):
            key = action_key(action)
            found = memo.get(key)
            if found is None:
                missing.append((i, key, action))
            else:
                out[i] = found
        if missing:
            vectors, complete = self.encoder.actions([a for _, _, a in missing], block=None)
            for (i, key, _), vector, done in zip(missing, vectors, complete, strict=True):
                out[i] = found = vector * self.actions.scale
                if done:
                    memo.put(key, found)
                else:
                    final[i] = False
        return model.project_actions(out), final

    # -- snapshots ------------------------------------------------------------------------
    def save(self) -> None:
        """Write a versioned snapshot and the ``latest`` pointer; keep the last few versions.

        A snapshot is ``<meta length (4 bytes)> <meta JSON> <correction's offsets> <network
        (npz)>``. The offsets, up to a million numbers (``cells_f64`` in the meta's
        ``correction``), are raw little-endian float64, not a list in the JSON: orjson wrote
        that list in one call of 35-40 ms at the 200,000-offset cap, holding the interpreter
        lock while requests waited, and the parts are joined in one copy (docs/benchmarks.md,
        "Stalls inside `rank()`"). The JSON keeps an empty list in their place. A version
        before this one finds no archive where it reads the network, and starts fresh with a
        warning; snapshots of those versions, with the offsets in the JSON, still restore.
        """
        self._steps_since_snapshot = 0
        correction = None if self.correction is None else self.correction.state()
        cells = np.empty(0, dtype="<f8")
        if correction is not None:
            cells = correction.pop("cells")
            correction["cells"] = []
            correction["cells_f64"] = len(cells)
        net = self.net.to_bytes()
        meta = orjson.dumps({
            "version": self.net.step, "learned": self.learned,
            "numeric": self.encoder.numeric.state(), "text": self.text_scaler.state(),
            "stats": self.counts.state(), "correction": correction,
            "gain": self.fresh_gain.state(),
            "posterior": None if self.posterior is None else {
                # orjson writes C-contiguous arrays only
                "precision": np.ascontiguousarray(self.posterior.precision),
                "b": np.ascontiguousarray(self.posterior.b),
                # which posterior, and neural-linear's noise (restored without it, the noise
                # went back to 0.25; a review of 2026-12-05)
                "kind": type(self.posterior).__name__,
                "noise": getattr(self.posterior, "noise", None)},
        }, option=orjson.OPT_SERIALIZE_NUMPY)
        blob = b"".join((struct.pack("<I", len(meta)), meta, cells.data, net))
        version = self.net.step
        # ``latest`` names the version instead of holding a second copy of the ~4 MB blob: the
        # write is half as long for a reward waiting behind it.
        versions = [v for v in self._saved_versions() if v != version] + [version]
        stale, kept = versions[:-KEEP_VERSIONS], versions[-KEEP_VERSIONS:]
        self.store.set_many({f"model:{self.name}:v{version}": blob,
                             f"model:{self.name}:latest": f"v{version}".encode(),
                             f"model:{self.name}:versions": orjson.dumps(kept)})
        self._versions = kept  # once written: a failed write names no missing version
        self._as_saved = (version, self.learned)
        for old in stale:
            self.store.delete(f"model:{self.name}:v{old}")

    def _restore_gain(self, saved: Any) -> None:
        """The gauge of the network on fresh samples, if the snapshot has a sound one. It is a
        statistic, not the model: one that is missing (a snapshot of an older version) or
        damaged starts afresh and the snapshot is still used (a damaged gauge threw the whole
        model away, a review of 2026-12-06)."""
        if saved is None:
            return
        try:
            self.fresh_gain.restore(saved)  # ValueError for anything but a sound state
        except ValueError as exc:
            log.warning("ef_middleware: loop %r: the snapshot's gauge of fresh samples is "
                        "damaged (or of an older form) and starts afresh (%s)", self.name, exc)

    def _restore_correction(self, saved: dict[str, Any], cells: npt.NDArray[np.float64]
                            ) -> None:
        """The correction's offsets from a snapshot: ``cells``, the raw numbers after its
        meta, or an older snapshot's JSON list (``saved`` has no ``cells_f64``). Offsets that
        cannot be read are left out with a warning, and the rest of the snapshot is kept."""
        assert self.correction is not None
        try:
            self.correction.restore({**saved, "cells": cells} if "cells_f64" in saved
                                    else saved)
        except Exception as exc:
            log.warning("ef_middleware: loop %r: the snapshot's correction offsets are "
                        "unreadable, starting without them (%s: %s)", self.name,
                        type(exc).__name__, exc)

    def _saved_versions(self) -> list[int]:
        """The versions of this loop's snapshots in the store, oldest first, from their index
        key. Snapshots land at any step (a pass takes several steps, and close saves too), so
        the ones to delete are looked up, not computed: ``version - 300`` was missed whenever
        a pass crossed the 100-step mark, and every such snapshot (about 4 MB) stayed."""
        if self._versions is None:
            raw = self.store.get(f"model:{self.name}:versions")
            try:
                found = orjson.loads(raw) if raw is not None else []
                self._versions = [int(v) for v in found]
            except (orjson.JSONDecodeError, TypeError, ValueError):
                self._versions = []
        return self._versions

    def _check_meta(self, meta: dict[str, Any]) -> None:
        """Raise unless every part of a snapshot's meta restores into this loop's shapes: each
        is read into a throwaway copy first, so that a damaged part leaves the loop as it
        was (a review of 2026-12-05: a missing field raised out of ``engine.loop()``, and
        statistics of the wrong length were restored, then failed every rank)."""
        int(meta.get("learned", 0))
        numeric = NumericSpace(self.encoder.numeric.dim)
        numeric.restore(meta["numeric"])
        if any(not 0 <= slot < numeric.dim for slot in numeric.slots.values()):
            raise ValueError("a numeric slot lies outside the model's input")
        _check_scaler(numeric.scaler, numeric.dim, "numeric")
        if "text" in meta:
            text = RunningScaler(self.text_scaler.mean.shape[0])
            text.restore(meta["text"])
            _check_scaler(text, text.mean.shape[0], "text")
        ActionCounts().restore(meta["stats"])
        saved = meta.get("posterior")
        if saved is not None:
            np.asarray(saved["precision"], dtype=np.float64)
            np.asarray(saved["b"], dtype=np.float64)

    def restore(self) -> bool:
        """Load the newest snapshot that reads and fits this loop's model; report success.

        The latest first, then the older versions the index keeps, newest first: a latest
        that was missing or damaged (a write torn by a crash, a size limit's eviction)
        started the loop fresh while an older snapshot was whole."""
        names = self._snapshot_names()
        for tried, name in enumerate(names):
            blob = self.store.get(f"model:{self.name}:{name}")
            read = None if blob is None else self._read(blob)
            if read is None:
                continue
            if tried:
                log.warning("ef_middleware: loop %r: restored the older snapshot %s (the "
                            "newer could not be used)", self.name, name)
            self._apply(*read)
            saved = read[0].get("correction")
            if not tried and (saved is None or "cells_f64" in saved):
                # the latest, in this version's form: nothing to write again until it learns
                # (an older one, or an older form, is saved again at close)
                self._as_saved = (self.net.step, self.learned)
            return True
        return False

    @property
    def unsaved(self) -> bool:
        """Whether the model learned anything since it was restored or saved (a fresh model
        counts as saved: a fresh start gives it back)."""
        return self._as_saved != (self.net.step, self.learned)

    def _snapshot_names(self) -> list[str]:
        """``v{n}`` of the snapshots to try: the latest, then the index's, newest first."""
        names: list[str] = []
        latest = self.store.get(f"model:{self.name}:latest")
        if latest is not None:
            names.append(latest.decode("ascii", "replace"))
        for version in reversed(self._saved_versions()):
            if f"v{version}" not in names:
                names.append(f"v{version}")
        return names

    def _read(self, blob: bytes) -> tuple[dict[str, Any], npt.NDArray[np.float64], RewardNet
                                          ] | None:
        """A snapshot's meta, correction offsets and network, checked; ``None`` (and a
        warning) for one that is damaged or of another architecture."""
        try:
            (size,) = struct.unpack_from("<I", blob)
            meta = _loads(blob[4 : 4 + size])
            if not isinstance(meta, dict):
                raise TypeError(f"its meta is a {type(meta).__name__}, not an object")
            count = _cells_count(meta)
            cells = np.frombuffer(blob, dtype="<f8", count=count, offset=4 + size)
            net = RewardNet.from_bytes(blob[4 + size + 8 * count :])
            self._check_meta(meta)
        except Exception as exc:  # whatever a damaged snapshot raises: it is not used
            log.warning("ef_middleware: loop %r: unreadable snapshot ignored (%s: %s)",
                        self.name, type(exc).__name__, exc)
            return None
        if net.config.layer_sizes() != self.net.config.layer_sizes():
            log.warning("ef_middleware: loop %r: snapshot has another architecture; not "
                        "restored", self.name)
            return None
        return meta, cells, net

    def _apply(self, meta: dict[str, Any], cells: npt.NDArray[np.float64],
               net: RewardNet) -> None:
        """Make a checked snapshot (:meth:`_read`) this loop's state."""
        net.config = self.settings.model  # optimiser settings follow the code, shapes the data
        net.rng = self.net.rng
        self.net = net
        self.learned = int(meta.get("learned", 0))
        self.encoder.numeric.restore(meta["numeric"])
        if "text" in meta:
            self.text_scaler.restore(meta["text"])
        self.counts.restore(meta["stats"])
        self._restore_gain(meta.get("gain"))
        if self.correction is not None and meta.get("correction"):
            self._restore_correction(meta["correction"], cells)
        saved = meta.get("posterior")
        if self.posterior is not None and saved is not None:
            precision = np.asarray(saved["precision"], dtype=np.float64)
            b = np.asarray(saved["b"], dtype=np.float64)
            kind = saved.get("kind", type(self.posterior).__name__)  # older: not said
            # Not another strategy's (laplace's precision is in logits, neural-linear's in
            # rewards): this one then starts from its prior until its next rebuild.
            if (kind == type(self.posterior).__name__
                    and precision.shape == self.posterior.precision.shape
                    and b.shape == self.posterior.b.shape):
                self.posterior.precision = precision
                self.posterior.b = b
                noise = saved.get("noise")
                if isinstance(self.posterior, LinearPosterior) and isinstance(noise, float):
                    self.posterior.noise = float(np.clip(noise, 1e-3, 0.25))


def _check_scaler(scaler: RunningScaler, dim: int, what: str) -> None:
    for name in ("count", "mean", "m2"):
        array = getattr(scaler, name)
        if array.shape != (dim,) or not np.isfinite(array).all():
            raise ValueError(f"the {what} statistics' {name} is not {dim} finite numbers")


def _cells_count(meta: dict[str, Any]) -> int:
    """How many raw numbers of the correction's offsets follow a snapshot's meta."""
    saved = meta.get("correction")
    count = saved.get("cells_f64", 0) if isinstance(saved, dict) else 0
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"the correction's offsets are counted as {count!r}")
    return count


def _loads(text: bytes) -> Any:
    """A snapshot's meta: orjson's, or the standard library's for older snapshots (which may
    spell NaN, refused by orjson)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def action_key(action: Action) -> ActionKey:
    return action.id, tuple(sorted(action.features.items()))
