"""The reward model: a small numpy MLP that predicts the expected reward of (context, action).

Input ``[context text (384) | action text (384) | numeric]`` -> Dense 256 ReLU -> 128 ReLU -> 64
ReLU -> 1 sigmoid. Weights live in one flat contiguous array (views per layer) so that Adam,
clipping, snapshots and copies are single vector operations. Training minimises the binary cross
entropy between the sigmoid output and the reward normalised to [0, 1]; its minimiser is the
expected reward, so soft targets are fine.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from . import fused
from ._types import FloatArray
from .memo import Memo

Array = npt.NDArray[np.floating[Any]]
ACTION_ROWS_KEPT = 20_000  # per-call actions' layer-1 rows one served model keeps (the oldest go)
DENORMAL_EVERY = 32


@dataclass(frozen=True)
class ModelConfig:
    """Shape and optimiser settings of a :class:`RewardNet`."""

    text_dim: int = 384
    numeric_dim: int = 16
    hidden: tuple[int, ...] = (256, 128, 64)
    learning_rate: float = 2e-3
    min_learning_rate: float = 2e-4
    warmup_steps: int = 50
    decay_steps: int = 5_000
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    dropout: float = 0.0  # the thompson-dropout strategy trains with 0.1 unless set
    average_decay: float = 0.99  # Polyak averaging of the weights that are served
    average_ramp: int = 0  # 0: decay ramps as 1 - 1/step; N: as (1 + step) / (N + step)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    @property
    def input_dim(self) -> int:
        return 2 * self.text_dim + self.numeric_dim

    def layer_sizes(self) -> list[tuple[int, int]]:
        sizes = [self.input_dim, *self.hidden, 1]
        return list(itertools.pairwise(sizes))


def layer_views(config: ModelConfig, params: Array) -> list[tuple[Array, Array]]:
    """``(weights, bias)`` views into the flat parameter vector, layer by layer."""
    layers: list[tuple[Array, Array]] = []
    offset = 0
    for fan_in, fan_out in config.layer_sizes():
        w = params[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        layers.append((w, params[offset : offset + fan_out]))
        offset += fan_out
    return layers


def parameter_count(config: ModelConfig) -> int:
    return sum(i * o + o for i, o in config.layer_sizes())


def learning_rate(config: ModelConfig, step: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_learning_rate``.

    ``step`` counts from 1. After ``warmup_steps + decay_steps`` the rate stays at the minimum,
    which keeps the model able to follow a drifting population.
    """
    top, low = config.learning_rate, config.min_learning_rate
    if step <= config.warmup_steps:
        return top * step / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / config.decay_steps)
    return low + 0.5 * (top - low) * (1.0 + math.cos(math.pi * progress))


class RewardNet:
    """The trainable network with its Adam state.

    Parameters
    ----------
    config
        Layer sizes and optimiser settings.
    seed
        Seeds Xavier initialisation and dropout masks.
    dtype
        ``float32`` in production; the gradient check uses ``float64``.
    """

    def __init__(self, config: ModelConfig, seed: int = 0, dtype: type = np.float32) -> None:
        self.config = config
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        total = parameter_count(config)
        self.params: Array = np.zeros(total, dtype=self.dtype)
        self.layers = layer_views(config, self.params)
        for w, _ in self.layers:
            # Xavier/Glorot uniform (Glorot & Bengio 2010): U(+-sqrt(6 / (fan_in + fan_out)))
            limit = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
            w[...] = self.rng.uniform(-limit, limit, size=w.shape)
        self.m: Array = np.zeros_like(self.params)
        self.v: Array = np.zeros_like(self.params)
        self._tmp: Array = np.zeros_like(self.params)
        self.average: Array = self.params.copy()
        self.step = 0
        self.fused: bool | None = None  # the optimiser step's kernel, see apply()
        self._tensors: tuple[list[list[Any]], list[Any], Any] | None = None  # torch views
        self.logits: Array = np.zeros(0, dtype=self.dtype)  # of the last loss_and_grad

    # -- forward / backward -------------------------------------------------------------------
    def forward(self, x: Array | FactoredInput, *, train: bool = False
                ) -> tuple[Array, list[Any]]:
        """Return the logits ``(B,)`` and the activations needed by :meth:`backward`."""
        acts: list[Any] = [x]
        h: Any = x
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            z = x.project(w) + b if i == 0 and isinstance(x, FactoredInput) else h @ w + b
            if i == last:
                return z[:, 0], acts
            h = np.maximum(z, 0.0)
            if train and i == last - 1 and self.config.dropout > 0:
                keep = 1.0 - self.config.dropout
                mask = (self.rng.random(h.shape) < keep).astype(self.dtype) / keep
                h = h * mask
                acts.append(mask)  # inverted dropout on the last hidden layer
            else:
                acts.append(np.ones(0, dtype=self.dtype))
            acts.append(h)
        raise AssertionError("unreachable")

    def backward(self, acts: list[Any], dlogits: Array) -> Array:
        """Gradient of the loss w.r.t. the flat parameters, given d loss / d logits."""
        grads = np.empty_like(self.params)
        offset_end = grads.size
        delta = dlogits[:, None].astype(self.dtype)
        for i in range(len(self.layers) - 1, -1, -1):
            w, b = self.layers[i]
            h_in = acts[2 * i] if i > 0 else acts[0]
            np.sum(delta, axis=0, out=grads[offset_end - b.size : offset_end])
            offset_end -= b.size
            gw = grads[offset_end - w.size : offset_end].reshape(w.shape)  # written in place
            if isinstance(h_in, FactoredInput):
                h_in.weight_gradient(delta, out=gw)
            else:
                np.matmul(h_in.T, delta, out=gw)
            offset_end -= w.size
            if i == 0:
                break
            delta = delta @ w.T
            mask = acts[2 * i - 1]
            if mask.size:
                delta = delta * mask
            delta = delta * (acts[2 * i] > 0)
        return grads

    def loss_and_grad(self, x: Array | FactoredInput, y: Array, *,
                      train: bool = True) -> tuple[float, Array]:
        """Mean binary cross entropy of ``sigmoid(logits)`` against targets ``y`` in [0, 1].
        The logits stay in :attr:`logits` until the next call (the learner's gauge of the
        network on samples it has not learned yet reads them: :mod:`~ef_middleware.gain`)."""
        logits, acts = self.forward(x, train=train)
        self.logits = logits
        # log(1 + e^z) - y z, computed stably
        loss = float(np.mean(np.logaddexp(0.0, logits) - y * logits))
        dlogits = (sigmoid(logits) - y) / len(y)
        return loss, self.backward(acts, dlogits)

    # -- optimiser ----------------------------------------------------------------------------
    def apply(self, grads: Array) -> float:
        """One Adam step (Kingma & Ba 2015, Algorithm 1) with global-norm clipping and
        decoupled weight decay (AdamW, Loshchilov & Hutter 2019). Returns the learning rate.

        Works in place on preallocated buffers, and on ``grads``, which it may overwrite. The
        step itself runs as torch's fused kernel when torch is loaded and agrees with the numpy
        step (:mod:`ef_middleware.fused`; ``fused``: ``None`` decides so, ``False`` always
        numpy, ``True`` requires the kernel), else as numpy passes. Moments of parameters whose
        gradient stays zero decay geometrically into float32 denormals, which made each step
        ten times slower, so they are flushed to zero every ``DENORMAL_EVERY`` steps (numpy has
        no flush-to-zero).
        """
        op = None
        if self.fused is not False:
            op = fused.kernel(_probe)
            if op is None and self.fused:
                raise RuntimeError("torch's fused AdamW kernel is not available here")
        return self._apply(grads, op)

    def _apply(self, grads: Array, op: fused.Kernel | None) -> float:
        cfg = self.config
        clip_by_norm(grads, cfg.clip_norm)
        self.step += 1
        lr = learning_rate(cfg, self.step)
        # Exponential moving average of the weights (Polyak & Juditsky 1992), the weights that
        # are served: online steps on single noisy rewards make the raw weights jitter. The
        # decay ramps up as 1 - 1/step so early averages are not biased towards the init.
        ramp = (1.0 - 1.0 / self.step if not cfg.average_ramp
                else (1.0 + self.step) / (cfg.average_ramp + self.step))
        keep = min(cfg.average_decay, ramp)
        if op is None:
            self._numpy_step(grads, lr, keep)
        else:
            self._fused_step(op, grads, lr, keep)
        if self.step % DENORMAL_EVERY == 0:
            tiny = np.finfo(self.dtype).tiny * 1e6
            self.m[np.abs(self.m) < tiny] = 0.0
            self.v[self.v < tiny] = 0.0
        return lr

    def _numpy_step(self, grads: Array, lr: float, keep: float) -> None:
        cfg = self.config
        tmp, m, v, params = self._tmp, self.m, self.v, self.params
        # m = beta1 m + (1 - beta1) g and v = beta2 v + (1 - beta2) g^2, as m += (1 - beta1)
        # (g - m): one pass fewer each. Every pass reads or writes the whole ~1 MB vector.
        np.subtract(grads, m, out=tmp)
        tmp *= 1.0 - cfg.beta1
        m += tmp
        np.multiply(grads, grads, out=grads)  # the caller's gradient is spent: reuse it
        grads -= v
        grads *= 1.0 - cfg.beta2
        v += grads
        # Decoupled weight decay (AdamW) on the weights before this step's update, not on
        # the biases: the weight blocks are views, so one pass, no mask.
        shrink = 1.0 - lr * cfg.weight_decay
        for w, _ in self.layers:
            w *= shrink
        # m_hat / (sqrt(v_hat) + eps), m_hat = m / c1, v_hat = v / c2, rewritten as
        # (sqrt(c2) / c1) m / (sqrt(v) + eps sqrt(c2)) to spare two passes.
        c1 = 1.0 - cfg.beta1**self.step
        root_c2 = math.sqrt(1.0 - cfg.beta2**self.step)
        np.sqrt(v, out=tmp)
        tmp += cfg.eps * root_c2
        np.divide(m, tmp, out=tmp)
        tmp *= lr * root_c2 / c1
        params -= tmp
        np.subtract(params, self.average, out=tmp)
        tmp *= 1.0 - keep
        self.average += tmp

    def _fused_step(self, op: fused.Kernel, grads: Array, lr: float, keep: float) -> None:
        """The same step as :meth:`_numpy_step` in torch's kernel: weights with decay, biases
        without, then the average."""
        cfg = self.config
        if self._tensors is None:  # the arrays are never replaced: views once per network
            per_layer = [op.tensors([a for pair in layer_views(cfg, x) for a in pair])
                         for x in (self.params, self.m, self.v)]
            self._tensors = (per_layer, op.tensors([self.params, self.average]),
                             op.step_counter())
        (p, m, v), (flat, average), counter = self._tensors
        grads = grads.astype(self.dtype, copy=False)  # the kernel wants one dtype
        g = op.tensors([a for pair in layer_views(cfg, grads) for a in pair])
        for part, decay in ((slice(0, None, 2), cfg.weight_decay), (slice(1, None, 2), 0.0)):
            op.adamw(p[part], g[part], m[part], v[part], counter, self.step, lr=lr,
                     beta1=cfg.beta1, beta2=cfg.beta2, weight_decay=decay, eps=cfg.eps)
        op.lerp(average, flat, 1.0 - keep)

    def train_batch(self, x: Array | FactoredInput, y: Array) -> float:
        """Forward, backward and one optimiser step on a batch; returns the loss."""
        loss, grads = self.loss_and_grad(x, y)
        self.apply(grads)
        return loss

    def predict(self, x: Array) -> Array:
        """Expected normalised reward of each row (no dropout)."""
        logits, _ = self.forward(x)
        return sigmoid(logits)

    # -- serialisation ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = json.dumps({"config": asdict(self.config), "step": self.step})
        np.savez(buf, params=self.params, m=self.m, v=self.v, average=self.average,
                 meta=np.frombuffer(meta.encode(), dtype=np.uint8))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RewardNet:
        with np.load(io.BytesIO(data)) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            known = {f.name for f in fields(ModelConfig)}  # a newer version's extra settings
            cfg = {k: v for k, v in meta["config"].items() if k in known}
            cfg["hidden"] = tuple(cfg["hidden"])
            net = cls(ModelConfig(**cfg), dtype=npz["params"].dtype.type)
            net.params[...] = npz["params"]
            net.m[...] = npz["m"]
            net.v[...] = npz["v"]
            net.average[...] = npz["average"]
        net.step = int(meta["step"])
        return net


@dataclass(frozen=True)
class FactoredInput:
    """A batch whose action part repeats a few action vectors: ``[context | action | numeric]``
    with ``action = actions[index]``.

    The first layer then costs one product per *distinct* action instead of one per row, in the
    forward pass and in its weight gradient, which is where most of a step's time goes.
    """

    context: Array  # (B, text_dim)
    actions: Array  # (U, text_dim): the distinct action vectors of the batch
    index: npt.NDArray[np.int64]  # (B,) row of each sample's action in ``actions``
    numeric: Array  # (B, numeric_dim)

    def dense(self) -> Array:
        """The same batch as one ``(B, input_dim)`` array."""
        out: Array = np.hstack([self.context, self.actions[self.index], self.numeric])
        return out

    def project(self, w: Array) -> Array:
        """``dense() @ w`` without building ``dense()``."""
        t = self.context.shape[1]
        out: Array = (self.context @ w[:t] + (self.actions @ w[t : 2 * t])[self.index]
                      + self.numeric @ w[2 * t :])
        return out

    def weight_gradient(self, delta: Array, out: Array | None = None) -> Array:
        """``dense().T @ delta`` without building ``dense()``: the action rows' deltas are
        summed per distinct action first. Written into ``out`` when given."""
        onehot = np.zeros((self.actions.shape[0], self.index.shape[0]), dtype=delta.dtype)
        onehot[self.index, np.arange(self.index.shape[0])] = 1.0
        t, n = self.context.shape[1], self.numeric.shape[1]
        if out is None:
            out = np.empty((2 * t + n, delta.shape[1]), dtype=delta.dtype)
        np.matmul(self.context.T, delta, out=out[:t])
        np.matmul(self.actions.T, onehot @ delta, out=out[t : 2 * t])
        np.matmul(self.numeric.T, delta, out=out[2 * t :])
        return out


def _probe(op: fused.Kernel) -> bool:
    """Whether ``op`` computes what the numpy step computes: three steps of a small network
    (warmup, decay, the average's ramp) in float32, compared to float32 rounding."""
    cfg = ModelConfig(text_dim=2, numeric_dim=1, hidden=(3, 2, 2), warmup_steps=2,
                      learning_rate=0.1, min_learning_rate=0.01, decay_steps=4,
                      weight_decay=0.05)
    numpy_net, fused_net = RewardNet(cfg, seed=0), RewardNet(cfg, seed=0)
    grads = np.linspace(-0.3, 0.5, numpy_net.params.size, dtype=np.float32)
    for scale in (1.0, -0.5, 0.25):
        numpy_net._apply(grads * scale, None)
        fused_net._apply(grads * scale, op)
    return all(np.allclose(getattr(numpy_net, name), getattr(fused_net, name),
                           rtol=1e-5, atol=1e-7) for name in ("params", "m", "v", "average"))


def clip_by_norm(grads: Array, max_norm: float) -> float:
    """Scale ``grads`` in place so their global L2 norm is at most ``max_norm`` (Pascanu et
    al. 2013); returns the norm before clipping."""
    norm = float(np.sqrt(np.dot(grads, grads)))
    if norm > max_norm:
        grads *= max_norm / norm
    return norm


def sigmoid(z: Array) -> Array:
    out: Array = 0.5 * (1.0 + np.tanh(0.5 * z))  # exact identity, no overflow warnings
    return out


class ServingModel:
    """A frozen copy of the weights for ranking, built by the learner for each model version.

    The first layer is split by input block, so ranking K actions costs one context projection
    plus K precomputed action rows (cached per action here, per version).

    Parameters
    ----------
    config
        The network's shape.
    params
        Flat weights to serve (the learner serves a moving average of the trained ones).
    version
        Model version (optimiser steps so far).
    """

    def __init__(self, config: ModelConfig, params: Array, version: int) -> None:
        cfg = config
        self.version = version
        self.config = cfg
        layers = layer_views(cfg, params)
        w1, b1 = layers[0]
        t = cfg.text_dim
        self.w1_context = np.ascontiguousarray(w1[:t], dtype=np.float32)
        self.w1_action = np.ascontiguousarray(w1[t : 2 * t], dtype=np.float32)
        self.w1_numeric = np.ascontiguousarray(w1[2 * t :], dtype=np.float32)
        self.b1 = b1.astype(np.float32)
        self.hidden = [
            (np.ascontiguousarray(w, dtype=np.float32), b.astype(np.float32))
            for w, b in layers[1:-1]
        ]
        w_out, b_out = layers[-1]
        self.w_out = np.ascontiguousarray(w_out[:, 0], dtype=np.float32)
        self.b_out = np.float32(b_out[0])
        # per-call actions' rows, filled by Loop (bounded: a frozen loop's model lives on)
        self.action_rows: Memo[tuple[str, tuple[tuple[str, str], ...]], FloatArray] = Memo(
            ACTION_ROWS_KEPT)

    def project_context(self, text: FloatArray, numeric: FloatArray) -> FloatArray:
        out: FloatArray = text @ self.w1_context + numeric @ self.w1_numeric + self.b1
        return out

    def project_actions(self, vectors: FloatArray) -> FloatArray:
        out: FloatArray = vectors @ self.w1_action
        return out

    def last_hidden(self, context_row: FloatArray, action_rows: FloatArray) -> FloatArray:
        """Activations of the last hidden layer for every action, shape ``(K, hidden[-1])``.

        The layers before the last one are computed in place in this thread's scratch arrays
        (:func:`_layer_out`), so a rank allocates only the array it returns: at K = 1,000 the
        first two layers' outputs are 1.5 MB that would otherwise be allocated (and their
        pages faulted in) twice per call.
        """
        k = action_rows.shape[0]
        layers = len(self.hidden)
        h = _layer_out(k, action_rows.shape[1], 0, last=layers == 0)
        np.add(action_rows, context_row, out=h)
        np.maximum(h, 0.0, out=h)
        for i, (w, b) in enumerate(self.hidden, start=1):
            out = _layer_out(k, w.shape[1], i, last=i == layers)
            np.matmul(h, w, out=out)
            out += b
            np.maximum(out, 0.0, out=out)
            h = out
        return h

    def logits(self, last_hidden: FloatArray) -> FloatArray:
        """Output logits from last-hidden activations (any leading shape)."""
        out: FloatArray = last_hidden @ self.w_out + self.b_out
        return out

    def head(self, last_hidden: FloatArray) -> FloatArray:
        """Predicted reward in [0, 1] from last-hidden activations (any leading shape)."""
        out: FloatArray = sigmoid(self.logits(last_hidden)).astype(np.float32)
        return out


_scratch = threading.local()  # per thread: {(layer, width): float32 array}


def _layer_out(rows: int, width: int, layer: int, *, last: bool) -> FloatArray:
    """The array a forward layer writes into: a new one for the last layer (the caller keeps
    it); otherwise the first ``rows`` rows of this thread's scratch array for that layer,
    grown to the most rows the thread has ranked (threads rank at once; one array per layer,
    so two layers of one width never share it)."""
    if last:
        return np.empty((rows, width), dtype=np.float32)
    arrays: dict[tuple[int, int], FloatArray] | None = getattr(_scratch, "arrays", None)
    if arrays is None:
        arrays = _scratch.arrays = {}
    found = arrays.get((layer, width))
    if found is None or found.shape[0] < rows:
        found = arrays[(layer, width)] = np.empty((rows, width), dtype=np.float32)
    return found[:rows]
