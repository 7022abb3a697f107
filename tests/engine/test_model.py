"""The reward network: gradients, optimiser, schedule and serialisation, checked by hand."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from ef_middleware import model
from ef_middleware.model import (
    FactoredInput,
    ModelConfig,
    RewardNet,
    ServingModel,
    clip_by_norm,
    layer_views,
    learning_rate,
)

SMALL = ModelConfig(text_dim=4, numeric_dim=3, hidden=(6, 5, 4), dropout=0.0)
# The optimiser's step runs as numpy passes or as torch's fused kernel (ef_middleware.fused):
# every optimiser check runs on both.
KERNELS = pytest.mark.parametrize("kernel", ["numpy", "torch"])


def net_with(kernel: str, cfg: ModelConfig, seed: int = 0, dtype: type = np.float64
             ) -> RewardNet:
    if kernel == "torch":
        import torch  # noqa: F401  (the kernel is used only once torch is loaded)
    net = RewardNet(cfg, seed=seed, dtype=dtype)
    net.fused = kernel == "torch"
    return net


def test_gradient_matches_finite_differences() -> None:
    net = RewardNet(SMALL, seed=3, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, SMALL.input_dim))
    y = rng.random(7)
    _, grad = net.loss_and_grad(x, y, train=False)
    eps = 1e-6
    numeric = np.empty_like(grad)
    for i in range(net.params.size):
        old = net.params[i]
        net.params[i] = old + eps
        up, _ = net.loss_and_grad(x, y, train=False)
        net.params[i] = old - eps
        down, _ = net.loss_and_grad(x, y, train=False)
        net.params[i] = old
        numeric[i] = (up - down) / (2 * eps)
    assert np.max(np.abs(numeric - grad)) < 1e-7
    assert np.abs(grad).max() > 1e-4  # the check is not vacuous


def test_gradient_with_dropout_mask_matches_finite_differences() -> None:
    cfg = ModelConfig(text_dim=4, numeric_dim=3, hidden=(6, 5, 4), dropout=0.5)
    net = RewardNet(cfg, seed=1, dtype=np.float64)
    x = np.random.default_rng(2).normal(size=(5, cfg.input_dim))
    y = np.linspace(0, 1, 5)
    state = net.rng.bit_generator.state
    _, grad = net.loss_and_grad(x, y, train=True)
    i = int(np.argmax(np.abs(grad)))
    eps = 1e-6
    old = net.params[i]
    net.params[i] = old + eps
    net.rng.bit_generator.state = state  # the same dropout mask
    up, _ = net.loss_and_grad(x, y, train=True)
    net.params[i] = old - eps
    net.rng.bit_generator.state = state
    down, _ = net.loss_and_grad(x, y, train=True)
    assert (up - down) / (2 * eps) == pytest.approx(grad[i], rel=1e-5)


def test_schedule_warmup_then_cosine_then_floor() -> None:
    cfg = ModelConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=50,
                      decay_steps=1000)
    assert learning_rate(cfg, 1) == pytest.approx(1e-3 / 50)
    assert learning_rate(cfg, 25) == pytest.approx(0.5e-3)
    assert learning_rate(cfg, 50) == pytest.approx(1e-3)
    assert learning_rate(cfg, 550) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way: cos = 0
    assert learning_rate(cfg, 1050) == pytest.approx(1e-4)
    assert learning_rate(cfg, 99_999) == pytest.approx(1e-4)


@KERNELS
def test_adam_step_matches_hand_computation(kernel: str) -> None:
    cfg = ModelConfig(text_dim=2, numeric_dim=1, hidden=(3, 2, 2), warmup_steps=1,
                      learning_rate=0.1, min_learning_rate=0.1, weight_decay=0.01,
                      clip_norm=1e9, dropout=0.0)
    net = net_with(kernel, cfg)
    p0 = net.params.copy()
    g = np.linspace(-0.3, 0.5, p0.size)
    net.apply(g.copy())
    # step 1: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2 -> update = g / (|g| + eps)
    expected = p0 - 0.1 * (g / (np.abs(g) + 1e-8) + 0.01 * weight_mask(net) * p0)
    np.testing.assert_allclose(net.params, expected, rtol=1e-12, atol=1e-12)
    g2 = np.full(p0.size, 0.2)
    p1 = net.params.copy()
    net.apply(g2.copy())
    m = 0.9 * 0.1 * g + 0.1 * g2
    v = 0.999 * 0.001 * g**2 + 0.001 * g2**2
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.999**2)
    expected2 = p1 - 0.1 * (m_hat / (np.sqrt(v_hat) + 1e-8) + 0.01 * weight_mask(net) * p1)
    np.testing.assert_allclose(net.params, expected2, rtol=1e-10, atol=1e-12)


def test_gradient_clipping_scales_to_the_norm() -> None:
    g = np.zeros(10)
    g[0], g[1] = 30.0, 40.0
    assert clip_by_norm(g, 1.0) == pytest.approx(50.0)
    np.testing.assert_allclose(g[:2], [0.6, 0.8])
    small = np.array([0.3, 0.4])
    clip_by_norm(small, 1.0)
    np.testing.assert_allclose(small, [0.3, 0.4])  # under the limit: untouched
    near = np.array([0.6, 0.8]) * 1.01  # just over the limit: clipped to it
    clip_by_norm(near, 1.0)
    np.testing.assert_allclose(near, [0.6, 0.8])


@pytest.mark.parametrize("max_norm", [1.0, 5.0])
def test_gradient_clipping_scales_to_any_max_norm(max_norm: float) -> None:
    """Clipped gradients have the norm ``max_norm``, not 1, and keep their direction."""
    g = np.array([30.0, 40.0, 0.0])
    assert clip_by_norm(g, max_norm) == pytest.approx(50.0)
    np.testing.assert_allclose(g, [0.6 * max_norm, 0.8 * max_norm, 0.0])
    assert np.linalg.norm(g) == pytest.approx(max_norm)


def test_dropout_masks_the_last_hidden_layer_only_with_inverted_scaling() -> None:
    """Training drops each unit of the last hidden layer with probability ``dropout`` and
    scales the kept ones by ``1 / (1 - dropout)`` (the expected activation is unchanged, so
    prediction needs no rescaling); the other layers are never masked."""
    cfg = ModelConfig(text_dim=4, numeric_dim=3, hidden=(6, 5, 4), dropout=0.25)
    net = RewardNet(cfg, seed=0, dtype=np.float64)
    x = np.random.default_rng(1).normal(size=(4000, cfg.input_dim))
    _, acts = net.forward(x, train=True)
    last = len(net.layers) - 1
    masks = {i: acts[2 * i + 1] for i in range(last)}
    assert all(masks[i].size == 0 for i in range(last - 1))  # only the last hidden layer
    mask = masks[last - 1]
    assert mask.shape == (4000, 4)
    assert set(np.unique(mask).tolist()) == {0.0, 1.0 / 0.75}
    assert np.mean(mask > 0) == pytest.approx(0.75, abs=0.02)
    _, plain = net.forward(x, train=False)
    assert all(plain[2 * i + 1].size == 0 for i in range(last))  # no dropout when serving


@KERNELS
def test_adam_clips_before_the_moments(kernel: str) -> None:
    cfg = ModelConfig(text_dim=2, numeric_dim=1, hidden=(3, 2, 2), warmup_steps=1,
                      clip_norm=1.0, dropout=0.0)
    net = net_with(kernel, cfg)
    g = np.full(net.params.size, 10.0)
    net.apply(g)
    expected_m = 0.1 * np.full(net.params.size, 10.0 / np.sqrt(net.params.size * 100.0))
    np.testing.assert_allclose(net.m, expected_m, rtol=1e-12)


def weight_mask(net: RewardNet) -> np.ndarray:
    """1 for weights, 0 for biases, in the flat parameter layout."""
    mask = np.zeros_like(net.params)
    for w, _ in layer_views(net.config, mask):
        w[...] = 1.0
    return mask


@KERNELS
def test_weight_decay_shrinks_weights_and_spares_biases(kernel: str) -> None:
    cfg = ModelConfig(text_dim=2, numeric_dim=1, hidden=(3, 2, 2), warmup_steps=1,
                      learning_rate=0.1, min_learning_rate=0.1, weight_decay=0.5)
    net = net_with(kernel, cfg)
    net.params[...] = 1.0
    net.apply(np.zeros_like(net.params))  # no gradient: only the decay acts
    mask = weight_mask(net)
    np.testing.assert_allclose(net.params[mask == 1], 1.0 - 0.1 * 0.5)
    np.testing.assert_allclose(net.params[mask == 0], 1.0)


def test_xavier_initialisation_bounds() -> None:
    net = RewardNet(ModelConfig(), seed=0)
    w, b = net.layers[0]
    limit = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.9 * limit
    assert not b.any()
    assert net.params.dtype == np.float32 and net.params.flags.c_contiguous


def test_snapshot_round_trip_keeps_weights_and_optimiser() -> None:
    """Both of Adam's moments and the served average come back: a restored loop that lost
    ``v`` would take full-size steps again, one that lost the average would serve other
    weights than before the restart."""
    net = RewardNet(SMALL, seed=5)
    x = np.random.default_rng(0).normal(size=(8, SMALL.input_dim)).astype(np.float32)
    for _ in range(3):
        net.train_batch(x, np.ones(8, np.float32))
    back = RewardNet.from_bytes(net.to_bytes())
    assert back.step == 3
    np.testing.assert_array_equal(back.params, net.params)
    np.testing.assert_array_equal(back.m, net.m)
    np.testing.assert_array_equal(back.v, net.v)
    np.testing.assert_array_equal(back.average, net.average)
    assert not np.array_equal(net.average, net.params)  # the average is its own array
    np.testing.assert_array_equal(back.predict(x), net.predict(x))


def test_serving_model_matches_training_forward() -> None:
    net = RewardNet(ModelConfig(dropout=0.0), seed=2)
    rng = np.random.default_rng(1)
    ctx = rng.normal(size=384).astype(np.float32)
    num = rng.normal(size=16).astype(np.float32)
    acts = rng.normal(size=(5, 384)).astype(np.float32)
    x = np.hstack([np.tile(ctx, (5, 1)), acts, np.tile(num, (5, 1))])
    serving = ServingModel(net.config, net.params, version=0)
    hidden = serving.last_hidden(serving.project_context(ctx, num), serving.project_actions(acts))
    np.testing.assert_allclose(serving.head(hidden), net.predict(x), rtol=1e-5, atol=1e-6)


def _serving_inputs(k: int, seed: int) -> tuple[ServingModel, np.ndarray, np.ndarray]:
    net = RewardNet(ModelConfig(dropout=0.0), seed=2)
    rng = np.random.default_rng(seed)
    serving = ServingModel(net.config, net.params, version=0)
    rows = serving.project_actions(rng.normal(size=(k, 384)).astype(np.float32))
    return serving, rows, rng.normal(size=(8, 384)).astype(np.float32)


def _plain_last_hidden(serving: ServingModel, context_row: np.ndarray, rows: np.ndarray
                       ) -> np.ndarray:
    h = np.maximum(rows + context_row, 0.0)
    for w, b in serving.hidden:
        h = np.maximum(h @ w + b, 0.0)
    return h


def test_a_served_forward_keeps_what_it_returned_when_called_again() -> None:
    # The layers before the last are computed in per-thread scratch arrays; the returned last
    # layer is the caller's (a cached view keeps it), so a second call must not overwrite it.
    serving, rows, contexts = _serving_inputs(50, seed=3)
    num = np.zeros(16, dtype=np.float32)
    first_row = serving.project_context(contexts[0], num)
    first = serving.last_hidden(first_row, rows)
    kept = first.copy()
    second = serving.last_hidden(serving.project_context(contexts[1], num), rows)
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(first, _plain_last_hidden(serving, first_row, rows))


def test_threads_ranking_at_once_get_their_own_forward() -> None:
    # Scratch arrays are per thread: one shared between threads would mix two visitors' layers.
    serving, rows, contexts = _serving_inputs(300, seed=4)
    num = np.zeros(16, dtype=np.float32)
    context_rows = [serving.project_context(c, num) for c in contexts]
    expected = [_plain_last_hidden(serving, r, rows) for r in context_rows]
    start = threading.Barrier(4)
    wrong: list[int] = []

    def rank(offset: int) -> None:
        start.wait()
        for i in range(150):
            j = (i + offset) % len(context_rows)
            if not np.array_equal(serving.last_hidden(context_rows[j], rows), expected[j]):
                wrong.append(j)

    threads = [threading.Thread(target=rank, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_a_served_forward_with_one_hidden_layer_or_many_shapes_is_the_plain_one() -> None:
    rng = np.random.default_rng(5)
    kept: list[dict[tuple[int, int], np.ndarray]] = []

    def rank_in_a_fresh_thread() -> None:
        for hidden in [(7,), (6, 6, 6)]:  # no scratch layer at all; two layers of one width
            cfg = ModelConfig(text_dim=4, numeric_dim=3, hidden=hidden, dropout=0.0)
            serving = ServingModel(cfg, RewardNet(cfg, seed=1).params, version=0)
            for k in [*range(1, 20), 60, 5, 200, 3]:  # scratch grows, then serves fewer rows
                rows = serving.project_actions(rng.normal(size=(k, 4)).astype(np.float32))
                row = serving.project_context(rng.normal(size=4).astype(np.float32),
                                              rng.normal(size=3).astype(np.float32))
                np.testing.assert_array_equal(serving.last_hidden(row, rows),
                                              _plain_last_hidden(serving, row, rows))
        kept.append(dict(model._scratch.arrays))

    thread = threading.Thread(target=rank_in_a_fresh_thread)
    thread.start()
    thread.join()
    # ... and the thread kept one scratch array per layer before the last, as large as its
    # largest rank (action lists of many lengths)
    assert sorted(kept[0]) == [(0, 6), (1, 6)]
    assert [a.shape[0] for a in kept[0].values()] == [200, 200]


def test_training_reduces_loss() -> None:
    net = RewardNet(SMALL, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, SMALL.input_dim)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    first = net.train_batch(x, y)
    for _ in range(300):
        last = net.train_batch(x, y)
    assert last < 0.5 * first


def test_factored_input_gives_the_dense_loss_and_gradient() -> None:
    net = RewardNet(SMALL, seed=4, dtype=np.float64)
    rng = np.random.default_rng(5)
    batch = FactoredInput(context=rng.normal(size=(9, SMALL.text_dim)),
                          actions=rng.normal(size=(3, SMALL.text_dim)),
                          index=np.array([0, 2, 2, 1, 0, 0, 2, 1, 1]),
                          numeric=rng.normal(size=(9, SMALL.numeric_dim)))
    y = rng.random(9)
    loss, grad = net.loss_and_grad(batch, y, train=False)
    dense_loss, dense_grad = net.loss_and_grad(batch.dense(), y, train=False)
    assert loss == pytest.approx(dense_loss, rel=1e-12)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-10, atol=1e-12)


@KERNELS
@pytest.mark.parametrize("ramp", [0, 10])
def test_served_average_follows_its_ramp(ramp: int, kernel: str) -> None:
    """The served weights are an exponential moving average whose decay ramps up: as
    1 - 1/step (the plain mean of all iterates so far) or as (1 + step) / (ramp + step)."""
    cfg = ModelConfig(text_dim=2, numeric_dim=1, hidden=(3, 2, 2), warmup_steps=1,
                      learning_rate=0.1, min_learning_rate=0.1, clip_norm=1e9,
                      average_decay=0.9, average_ramp=ramp)
    net = net_with(kernel, cfg)
    average = net.params.copy()
    rng = np.random.default_rng(0)
    for step in range(1, 40):
        net.apply(rng.normal(size=net.params.size))
        growth = 1 - 1 / step if not ramp else (1 + step) / (ramp + step)
        keep = min(0.9, growth)
        average = keep * average + (1 - keep) * net.params
        np.testing.assert_allclose(net.average, average, rtol=1e-10, atol=1e-12)


def test_a_snapshot_from_another_version_loads() -> None:
    """Settings a snapshot lacks take their defaults; settings it has that this version does
    not know are ignored (the shapes decide whether it fits)."""
    import io
    import json as json_

    net = RewardNet(SMALL, seed=3)
    with np.load(io.BytesIO(net.to_bytes())) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json_.loads(arrays["meta"].tobytes().decode())
    del meta["config"]["average_ramp"]
    meta["config"]["a_setting_from_the_future"] = 1
    arrays["meta"] = np.frombuffer(json_.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    back = RewardNet.from_bytes(buf.getvalue())
    assert back.config == SMALL
    np.testing.assert_array_equal(back.params, net.params)


def test_replay_draws_uniformly_or_by_recency() -> None:
    from ef_middleware.trainer import Replay

    replay = Replay(1000, text_dim=2, numeric_dim=1)
    for start in range(0, 1300, 100):  # wraps around: the head is not at slot 0
        n = np.arange(start, start + 100, dtype=np.float32)
        replay.add(np.zeros((100, 2), np.float32), np.zeros((100, 1), np.float32),
                   np.ones((100, 1), np.float32), np.zeros(100, np.int64), n)
    rng = np.random.default_rng(0)
    newest = 1299.0
    uniform = newest - replay.y[replay.draw(rng, 20_000, None)]
    assert uniform.min() == 0 and uniform.max() == 999
    assert abs(uniform.mean() - 499.5) < 10
    recent = newest - replay.y[replay.draw(rng, 20_000, 100.0)]
    assert recent.min() == 0 and recent.max() <= 999
    # Exponential ages of mean 100, floored: mean about 99.5 (a tail beyond 1000 is negligible).
    assert abs(recent.mean() - 99.5) < 4
    assert np.mean(recent < 100) == pytest.approx(1 - math.exp(-1), abs=0.02)
