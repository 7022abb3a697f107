"""The learning side of one loop: network, replay buffer, posterior, counts and snapshots.

Only the learner thread calls a :class:`Trainer` (ranking reads the :class:`ServingState` it
publishes), so none of this is on the request path.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._types import FloatArray
from .features import Action, EncodedContext, FeatureEncoder
from .model import RewardNet, ServingModel
from .posterior import LastLayerPosterior, PosteriorSnapshot, with_bias
from .settings import LoopSettings
from .store import Store

log = logging.getLogger("ef_middleware")
KEEP_VERSIONS = 3


@dataclass(frozen=True)
class ServingState:
    """Everything ranking reads, swapped as one reference when the learner publishes."""

    model: ServingModel
    actions: tuple[Action, ...]
    index: dict[str, int]
    rows: FloatArray  # (K, hidden[0]) action half of layer 1
    counts: FloatArray  # (K,) learned decisions per action
    successes: FloatArray  # (K,) summed normalised rewards per action
    posterior: PosteriorSnapshot | None

    @property
    def version(self) -> int:
        return self.model.version


@dataclass
class Sample:
    """One finalised decision, ready to learn: inputs, chosen action and normalised reward."""

    inputs: EncodedContext
    action: Action
    reward: float


class Replay:
    """A ring buffer of recent samples (text inputs, raw numerics, targets)."""

    def __init__(self, capacity: int, text_width: int, numeric_dim: int) -> None:
        self.text = np.zeros((capacity, text_width), dtype=np.float32)
        self.raw = np.zeros((capacity, numeric_dim), dtype=np.float32)
        self.mask = np.zeros((capacity, numeric_dim), dtype=np.float32)
        self.y = np.zeros(capacity, dtype=np.float32)
        self.size = 0
        self.head = 0

    def add(self, text: FloatArray, raw: FloatArray, mask: FloatArray, y: FloatArray) -> None:
        cap = self.y.shape[0]
        for i in range(y.shape[0]):
            self.text[self.head], self.raw[self.head] = text[i], raw[i]
            self.mask[self.head] = mask[i]
            self.y[self.head] = y[i]
            self.head = (self.head + 1) % cap
            self.size = min(self.size + 1, cap)

    def recent(self, n: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        cap = self.y.shape[0]
        n = min(n, self.size)
        return (self.head - 1 - np.arange(n)) % cap


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
        self.replay = Replay(settings.replay_size, 2 * cfg.text_dim, cfg.numeric_dim)
        self.uses_posterior = settings.strategy in ("neural-linear", "ucb")
        self.posterior = LastLayerPosterior(cfg.hidden[-1] + 1)
        self.stats: dict[str, list[float]] = {}  # action id -> [count, summed reward]
        self.since_snapshot = 0
        self._action_vectors: dict[tuple[str, tuple[tuple[str, str], ...]], FloatArray] = {}

    # -- inputs ----------------------------------------------------------------------------
    def action_vectors(self, actions: Sequence[Action]) -> FloatArray:
        """Pooled embeddings of ``actions``, memoised per (id, features)."""
        out = np.empty((len(actions), self.encoder.dim), dtype=np.float32)
        for i, action in enumerate(actions):
            key = action_key(action)
            vec = self._action_vectors.get(key)
            if vec is None:
                vec = self.encoder.actions([action])[0]
                self._action_vectors[key] = vec
            out[i] = vec
        return out

    def _inputs(self, text: FloatArray, raw: FloatArray, mask: FloatArray) -> FloatArray:
        numeric = self.encoder.numeric.standardise(raw, mask)
        return np.ascontiguousarray(np.hstack([text, numeric]), dtype=np.float32)

    # -- learning --------------------------------------------------------------------------
    def learn(self, samples: Sequence[Sample]) -> None:
        """One optimiser step on ``samples`` plus a draw from the replay buffer."""
        n = len(samples)
        text = np.empty((n, self.replay.text.shape[1]), dtype=np.float32)
        ctx_dim = self.encoder.dim
        text[:, ctx_dim:] = self.action_vectors([s.action for s in samples])
        raw = np.empty((n, self.replay.raw.shape[1]), dtype=np.float32)
        mask = np.empty_like(raw)
        for i, s in enumerate(samples):
            text[i, :ctx_dim] = s.inputs.text
            raw[i], mask[i] = s.inputs.numeric_raw, s.inputs.numeric_mask
        y = np.array([s.reward for s in samples], dtype=np.float32)
        self.encoder.numeric.update(raw, mask)
        replayed = min(self.settings.replay_batch, self.replay.size)
        if replayed:
            pick = self.rng.integers(0, self.replay.size, size=replayed)
            text_b = np.vstack([text, self.replay.text[pick]])
            raw_b = np.vstack([raw, self.replay.raw[pick]])
            mask_b = np.vstack([mask, self.replay.mask[pick]])
            y_b = np.concatenate([y, self.replay.y[pick]])
        else:
            text_b, raw_b, mask_b, y_b = text, raw, mask, y
        self.net.train_batch(self._inputs(text_b, raw_b, mask_b), y_b)
        self.replay.add(text, raw, mask, y)
        for s in samples:
            entry = self.stats.setdefault(s.action.id, [0.0, 0.0])
            entry[0] += 1.0
            entry[1] += s.reward
        if self.uses_posterior:
            if self.net.step % self.settings.posterior_every == 0:
                self.rebuild_posterior()
            else:
                self.posterior.update(with_bias(self.hidden(self._inputs(text, raw, mask))), y)
        self.since_snapshot += 1
        if self.since_snapshot >= self.settings.snapshot_every:
            self.save()

    def hidden(self, x: FloatArray) -> FloatArray:
        h: FloatArray = x
        for w, b in self.net.layers[:-1]:
            h = np.maximum(h @ w + b, 0.0)
        return h

    def rebuild_posterior(self) -> None:
        rows = self.replay.recent(self.settings.posterior_window)
        r = self.replay
        x = self._inputs(r.text[rows], r.raw[rows], r.mask[rows])
        self.posterior.rebuild(with_bias(self.hidden(x)), r.y[rows])

    # -- publishing ------------------------------------------------------------------------
    def publish(self, actions: Sequence[Action]) -> ServingState:
        """A fresh serving state: weights copy, action rows of ``actions``, counts, posterior."""
        model = ServingModel(self.net, version=self.net.step)
        rows = model.project_actions(self.action_vectors(actions))
        counts = np.array([self.stats.get(a.id, (0.0, 0.0))[0] for a in actions], np.float32)
        succ = np.array([self.stats.get(a.id, (0.0, 0.0))[1] for a in actions], np.float32)
        post = self.posterior.snapshot() if self.uses_posterior and self.net.step else None
        return ServingState(model, tuple(actions), {a.id: i for i, a in enumerate(actions)},
                            np.ascontiguousarray(rows), counts, succ, post)

    # -- snapshots ------------------------------------------------------------------------
    def save(self) -> None:
        """Write a versioned snapshot and the ``latest`` pointer; keep the last few versions."""
        self.since_snapshot = 0
        meta = json.dumps({"version": self.net.step, "numeric": self.encoder.numeric.state(),
                           "stats": self.stats}).encode()
        blob = struct.pack("<I", len(meta)) + meta + self.net.to_bytes()
        version = self.net.step
        self.store.set_many({f"model:{self.name}:v{version}": blob,
                             f"model:{self.name}:latest": blob})
        old = version - KEEP_VERSIONS * self.settings.snapshot_every
        if old > 0:
            self.store.delete(f"model:{self.name}:v{old}")

    def restore(self) -> bool:
        """Load the latest snapshot if one exists and fits this loop's model; report success."""
        blob = self.store.get(f"model:{self.name}:latest")
        if blob is None:
            return False
        try:
            (size,) = struct.unpack_from("<I", blob)
            meta = json.loads(blob[4 : 4 + size])
            net = RewardNet.from_bytes(blob[4 + size :])
        except (ValueError, KeyError, struct.error) as exc:
            log.warning("ef_middleware: loop %r: unreadable snapshot ignored (%s)", self.name, exc)
            return False
        if net.config.layer_sizes() != self.net.config.layer_sizes():
            log.warning("ef_middleware: loop %r: snapshot has another architecture; starting "
                        "fresh", self.name)
            return False
        net.config = self.settings.model  # optimiser settings follow the code, shapes the data
        net.rng = self.net.rng
        self.net = net
        self.encoder.numeric.restore(meta["numeric"])
        self.stats = {str(k): [float(v[0]), float(v[1])] for k, v in meta["stats"].items()}
        return True


def action_key(action: Action) -> tuple[str, tuple[tuple[str, str], ...]]:
    return action.id, tuple(sorted(action.features.items()))
