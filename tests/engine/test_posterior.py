"""The Bayesian last layers against a direct numpy computation of the same posterior."""

from __future__ import annotations

import numpy as np
import pytest

from ef_middleware.posterior import LaplacePosterior, LinearPosterior, with_bias


def rows(seed: int, n: int = 30, dim: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hidden features, predictions and rewards that sit 0.2 around them."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, dim)).astype(np.float32)
    predicted = rng.uniform(0.2, 0.8, n).astype(np.float32)
    rewards = (predicted + rng.choice([-0.2, 0.2], n)).astype(np.float32)
    return hidden, predicted, rewards


def test_the_linear_posterior_is_bayesian_linear_regression() -> None:
    """Rebuilt from rows, the linear posterior is Bishop's eq. 3.50-3.51 with prior
    precision 1 and the noise of the residuals: ``H = I + phi' phi / noise``, mean
    ``H^-1 phi' y / noise``, sd ``sqrt(x' H^-1 x)``, and it forgets rows folded in before."""
    old_hidden, old_predicted, old_rewards = rows(1)
    hidden, predicted, rewards = rows(2)
    post = LinearPosterior(4)
    post.update(with_bias(old_hidden), old_predicted, old_rewards)
    post.rebuild(with_bias(hidden), predicted, rewards)
    assert post.noise == pytest.approx(0.04, rel=1e-5)  # residuals of +-0.2
    phi = with_bias(hidden).astype(np.float64)
    h = np.eye(4) + phi.T @ phi / 0.04
    cov = np.linalg.inv(h)
    snap = post.snapshot()
    assert snap.mean is not None
    np.testing.assert_allclose(snap.mean, cov @ phi.T @ rewards / 0.04, rtol=1e-4, atol=1e-6)
    probe = np.random.default_rng(3).normal(size=(5, 3)).astype(np.float32)
    x = with_bias(probe).astype(np.float64)
    expected = np.sqrt(np.einsum("kd,de,ke->k", x, cov, x))
    np.testing.assert_allclose(snap.sd(with_bias(probe)), expected, rtol=1e-4)
    np.testing.assert_allclose(snap.sd_hidden(probe), expected, rtol=1e-4)


@pytest.mark.parametrize(("spread", "noise"), [(0.9, 0.25), (0.001, 1e-3)])
def test_the_linear_posteriors_noise_is_clipped_to_its_range(spread: float,
                                                             noise: float) -> None:
    """The residual variance sets the noise, kept within [1e-3, 0.25]: a network that fits
    (or misfits) the recent rewards cannot make the posterior infinitely sure (or vague)."""
    hidden, predicted, _ = rows(4)
    rewards = predicted + np.where(np.arange(predicted.size) % 2, spread, -spread)
    post = LinearPosterior(4)
    post.rebuild(with_bias(hidden), predicted, rewards.astype(np.float32))
    assert post.noise == pytest.approx(noise)


def test_the_laplace_posterior_weighs_rows_by_p_times_one_minus_p() -> None:
    """Laplace's Gram matrix weighs each row by the logistic curvature ``p (1 - p)``, floored
    at 1e-4 for predictions of exactly 0 or 1; widths are ``sqrt(x' H^-1 x)``."""
    hidden, predicted, rewards = rows(5, n=6)
    predicted[0], predicted[1] = 1.0, 0.0
    post = LaplacePosterior(4)
    post.update(with_bias(hidden), predicted, rewards)
    phi = with_bias(hidden).astype(np.float64)
    p = predicted.astype(np.float64)
    weights = np.maximum(p * (1 - p), 1e-4)
    h = np.eye(4) + (phi * weights[:, None]).T @ phi
    np.testing.assert_allclose(post.precision, h, rtol=1e-6)
    probe = with_bias(np.random.default_rng(6).normal(size=(4, 3)).astype(np.float32))
    x = probe.astype(np.float64)
    expected = np.sqrt(np.einsum("kd,de,ke->k", x, np.linalg.inv(h), x))
    np.testing.assert_allclose(post.snapshot().sd(probe), expected, rtol=1e-4)


def test_a_rebuilt_laplace_posterior_forgets_the_rows_before() -> None:
    """``rebuild`` starts again from the prior: after the representation moved, the old rows'
    features no longer describe those visitors."""
    old_hidden, old_predicted, old_rewards = rows(7)
    hidden, predicted, rewards = rows(8)
    post = LaplacePosterior(4)
    post.update(with_bias(old_hidden), old_predicted, old_rewards)
    post.rebuild(with_bias(hidden), predicted, rewards)
    fresh = LaplacePosterior(4)
    fresh.update(with_bias(hidden), predicted, rewards)
    np.testing.assert_array_equal(post.precision, fresh.precision)
    np.testing.assert_array_equal(post.b, fresh.b)
