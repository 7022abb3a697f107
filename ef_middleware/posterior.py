"""Bayesian linear regression on the network's last hidden layer.

With features phi (the last hidden activations plus a bias term), a N(0, I / prior_precision)
prior on the weights and Gaussian reward noise of variance ``noise``, the posterior is Gaussian
with precision ``Lambda = prior_precision * I + Phi' Phi / noise`` and mean
``Lambda^-1 Phi' r / noise`` (Bishop 2006, eq. 3.50-3.51). The learner updates it with every
trained reward and rebuilds it from the replay buffer when the representation has moved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._types import Float64Array, FloatArray


@dataclass(frozen=True)
class PosteriorSnapshot:
    """What ranking reads: the mean and a Cholesky factor L of the covariance (L L' = Sigma)."""

    mean: FloatArray
    chol: FloatArray


class LastLayerPosterior:
    """Running sufficient statistics of the regression; :meth:`snapshot` solves for the posterior.

    Parameters
    ----------
    dim
        Number of features (last hidden width + 1 for the bias).
    prior_precision
        Precision of the weight prior.
    noise
        Reward noise variance; 0.25 is the largest a reward in [0, 1] can have.
    """

    def __init__(self, dim: int, *, prior_precision: float = 1.0, noise: float = 0.25) -> None:
        self.dim = dim
        self.prior_precision = prior_precision
        self.noise = noise
        self.reset()

    def reset(self) -> None:
        self.precision: Float64Array = np.eye(self.dim) * self.prior_precision
        self.b: Float64Array = np.zeros(self.dim)

    def update(self, phi: FloatArray, rewards: FloatArray) -> None:
        """Fold rows ``phi`` (N, dim) with normalised ``rewards`` (N,) into the statistics."""
        p = phi.astype(np.float64)
        self.precision += p.T @ p / self.noise
        self.b += p.T @ rewards.astype(np.float64) / self.noise

    def rebuild(self, phi: FloatArray, rewards: FloatArray) -> None:
        """Recompute from scratch on current features (after the network changed)."""
        self.reset()
        self.update(phi, rewards)

    def snapshot(self) -> PosteriorSnapshot:
        # Sigma = Lambda^-1; with Lambda = C C' (Cholesky), L = C'^-1 satisfies L L' = Sigma.
        c = np.linalg.cholesky(self.precision)
        eye = np.eye(self.dim)
        c_inv = np.linalg.solve(c, eye)  # C^-1, lower triangular
        mean = c_inv.T @ (c_inv @ self.b)
        return PosteriorSnapshot(mean.astype(np.float32), np.ascontiguousarray(c_inv.T, np.float32))


def with_bias(hidden: FloatArray) -> FloatArray:
    """Append the constant feature that carries the regression's intercept."""
    return np.hstack([hidden, np.ones((hidden.shape[0], 1), dtype=hidden.dtype)])
