"""Bayesian last layers: the uncertainty that contextual exploration needs.

Both posteriors live on the features ``phi`` = the network's last hidden layer plus a bias term,
computed with the served weights, and both keep the weighted Gram matrix

    H = prior_precision * I + sum_i w_i phi_i phi_i'

from which a ranking reads ``sd(a) = sqrt(phi_a' H^-1 phi_a)``, per action and per context: a
context like those seen often gets a narrow score, an unusual one a wide score.

- :class:`LaplacePosterior`: the Laplace approximation of a logistic last layer around the
  trained weights (Bishop 2006, sec. 4.5; Chapelle & Li 2011 use it for Thompson sampling):
  ``w_i = p_i (1 - p_i)`` with ``p_i`` the model's prediction, and the width is in logits.
- :class:`LinearPosterior`: Bayesian linear regression on the rewards (Riquelme et al. 2018,
  "neural-linear"): ``w_i = 1 / noise``, the posterior mean ``H^-1 sum_i w_i y_i phi_i``
  (Bishop 2006, eq. 3.50-3.51) and widths in reward units. ``noise`` is the variance of the
  network's own residuals on the data the posterior is rebuilt from (empirical Bayes).

The learner folds every trained reward in and rebuilds the matrix from the most recent samples
when the representation has moved; keeping only recent samples also lets uncertainty grow back
where the population changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._types import Float64Array, FloatArray


@dataclass(frozen=True)
class PosteriorSnapshot:
    """What ranking reads: a factor ``L`` with ``L L' = H^-1``, and the regression's mean."""

    factor: FloatArray  # (D, D): sd(phi) = ||phi @ factor||
    mean: FloatArray | None  # (D,) for the linear regression; None for Laplace

    def sd(self, phi: FloatArray) -> FloatArray:
        """Posterior standard deviation of ``phi @ theta`` for each row of ``phi``."""
        proj = phi @ self.factor
        out: FloatArray = np.sqrt(np.einsum("kd,kd->k", proj, proj))
        return out

    def sd_hidden(self, hidden: FloatArray) -> FloatArray:
        """:meth:`sd` for ``phi = [hidden, 1]`` without building ``phi``."""
        proj = hidden @ self.factor[:-1]
        proj += self.factor[-1]
        out: FloatArray = np.sqrt(np.einsum("kd,kd->k", proj, proj))
        return out


class _Gram:
    """The weighted Gram matrix and the weighted reward sum of the rows folded in so far."""

    def __init__(self, dim: int, prior_precision: float) -> None:
        self.dim = dim
        self.prior_precision = prior_precision
        self.reset()

    def reset(self) -> None:
        self.precision: Float64Array = np.eye(self.dim) * self.prior_precision
        self.b: Float64Array = np.zeros(self.dim)
        self.count = 0

    def empty(self) -> bool:
        """Whether no sample is folded in: none counted since the last reset, and the
        precision still the prior's (a restored one is not; its count is not saved)."""
        return self.count == 0 and np.array_equal(self.precision,
                                                  np.eye(self.dim) * self.prior_precision)

    def add(self, phi: FloatArray, weights: Float64Array, rewards: FloatArray) -> None:
        p = phi.astype(np.float64)
        pw = p * weights[:, None]
        self.precision += pw.T @ p
        self.b += pw.T @ rewards.astype(np.float64)
        self.count += phi.shape[0]

    def factor(self) -> Float64Array:
        # H = C C' (Cholesky); L = C'^-1 satisfies L L' = H^-1.
        c = np.linalg.cholesky(self.precision)
        c_inv: Float64Array = np.linalg.solve(c, np.eye(self.dim))  # lower triangular
        return c_inv.T


class LaplacePosterior(_Gram):
    """Laplace approximation of a Bayesian logistic last layer (widths in logits)."""

    def __init__(self, dim: int, *, prior_precision: float = 1.0) -> None:
        super().__init__(dim, prior_precision)

    @staticmethod
    def weights(predicted: FloatArray) -> Float64Array:
        p = predicted.astype(np.float64)
        return np.maximum(p * (1.0 - p), 1e-4)

    def update(self, phi: FloatArray, predicted: FloatArray, rewards: FloatArray) -> None:
        """Fold rows ``phi`` (N, D) in, with the model's predictions for them."""
        self.add(phi, self.weights(predicted), rewards)

    def rebuild(self, phi: FloatArray, predicted: FloatArray, rewards: FloatArray) -> None:
        """Recompute from these rows only (after the network changed)."""
        self.reset()
        self.update(phi, predicted, rewards)

    def snapshot(self) -> PosteriorSnapshot:
        return PosteriorSnapshot(np.ascontiguousarray(self.factor(), np.float32), None)


class LinearPosterior(_Gram):
    """Bayesian linear regression of the normalised rewards on ``phi`` (widths in rewards)."""

    def __init__(self, dim: int, *, prior_precision: float = 1.0, noise: float = 0.25) -> None:
        super().__init__(dim, prior_precision)
        self.noise = noise

    def update(self, phi: FloatArray, predicted: FloatArray, rewards: FloatArray) -> None:
        """Fold rows ``phi`` (N, D) with normalised ``rewards`` (N,) in."""
        self.add(phi, np.full(phi.shape[0], 1.0 / self.noise), rewards)

    def rebuild(self, phi: FloatArray, predicted: FloatArray, rewards: FloatArray) -> None:
        """Recompute from these rows only, re-estimating the noise from the residuals."""
        if rewards.size >= 2:
            residual = rewards.astype(np.float64) - predicted.astype(np.float64)
            self.noise = float(np.clip(np.mean(residual**2), 1e-3, 0.25))
        self.reset()
        self.update(phi, predicted, rewards)

    def snapshot(self) -> PosteriorSnapshot:
        factor = self.factor()
        if self.empty():
            # No sample folded in yet: no mean, and the policy falls back to the network's.
            # The prior's mean, all zeros, was taken for a posterior: a new loop drew every
            # score around 0 (a review of 2026-12-05).
            return PosteriorSnapshot(np.ascontiguousarray(factor, np.float32), None)
        mean = factor @ (factor.T @ self.b)  # H^-1 b
        return PosteriorSnapshot(np.ascontiguousarray(factor, np.float32),
                                 mean.astype(np.float32))


Posterior = LaplacePosterior | LinearPosterior


def with_bias(hidden: FloatArray) -> FloatArray:
    """Append the constant feature that carries the regression's intercept."""
    return np.hstack([hidden, np.ones((hidden.shape[0], 1), dtype=hidden.dtype)])
