"""What every exploration policy shares: its inputs, its output and the propensity helpers.

A policy turns the model's view of K candidate actions into a choice, and the probability of
choosing each action under exactly the distribution the choice was drawn from. The chosen
action's probability is the *true propensity* logged for counterfactual evaluation. It is exact
(a closed form, or a one-dimensional integral computed to about 1e-3, see
:mod:`.winprob`) for every policy but ``thompson-dropout``, which logs a Monte Carlo estimate
over ``M`` draws of its own randomness that counts the draw that chose (see
:meth:`Policy.draws`): the chosen action's estimate is at least one draw in ``M``, biased up
by about ``(1 - p) / M``, which matters where ``p`` is below ``1 / M``.

Thompson policies draw the choice with one sample per action on the request path and compute
the probabilities only when asked (:class:`~ef_middleware.decision.Choice`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from scipy.special import ndtr

from .._types import Float64Array, FloatArray
from ..decision import LAZY_PROPENSITIES, Choice
from ..model import ServingModel
from ..posterior import PosteriorSnapshot
from .winprob import (
    MAX_EXACT,
    gaussian_win_probabilities,
    gaussian_win_probabilities_many,
    gaussian_win_probabilities_wide,
    live_actions,
)

RESOLVE_CELLS = 4096  # decisions x K^2 per vectorised propensity batch
SMALL_K = 16  # up to this many actions, a Gaussian Thompson draw runs on Python floats
NORMALS_CHUNK = 256  # standard normals drawn from the generator at a time (see Normals)


@dataclass
class Candidates:
    """The model's view of the K actions of one decision."""

    mean: FloatArray  # (K,) predicted normalised reward
    logits: FloatArray  # (K,) the same before the sigmoid
    hidden: FloatArray  # (K, H) last hidden layer
    counts: FloatArray  # (K,) learned decisions per action
    successes: FloatArray  # (K,) summed normalised rewards per action
    model: ServingModel
    posterior: PosteriorSnapshot | None
    learned: int = 0  # samples the model has learned from (all actions)
    memo: dict[str, Any] = field(default_factory=dict)
    """What a policy derives from this view alone (say, posterior widths): one view serves
    every visitor with the same context until the model is republished (``Loop.rank``)."""

    def widths(self) -> FloatArray:
        """The last layer's Laplace posterior sd per action, computed once per view."""
        found: FloatArray | None = self.memo.get("sd")
        if found is None:
            assert self.posterior is not None
            found = self.memo["sd"] = self.posterior.sd_hidden(self.hidden)
        return found


class Policy(ABC):
    """Base class: subclasses implement :meth:`choose`; ``samples`` caps Monte Carlo draws."""

    name: str = ""

    def __init__(self, *, samples: int = 1000) -> None:
        if samples < 1:
            raise ValueError("samples must be at least 1")
        self.samples = samples
        self._normal_stream: Normals | None = None
        # (counts, successes, what was derived from them) of the last call: see of_counts
        self._of_counts: tuple[FloatArray, FloatArray, Any] | None = None

    @abstractmethod
    def choose(self, c: Candidates, rng: np.random.Generator) -> Choice:
        """Draw a choice and return it with (a way to compute) every action's probability."""

    def draws(self, k: int) -> int:
        """Monte Carlo draws for K actions: fewer for large K, to bound the work at ~2e4
        sampled scores (K = 10: 1000 draws; K = 100: 200; K >= 313: 64)."""
        return int(max(64, min(self.samples, 20_000 // max(k, 1))))

    @staticmethod
    def monte_carlo(scores: FloatArray) -> Choice:
        """Choice and probabilities from ``(M, K)`` sampled scores; draw 0 makes the choice."""
        winners = np.argmax(scores, axis=1)
        probs = np.bincount(winners, minlength=scores.shape[1]).astype(np.float32)
        probs /= scores.shape[0]
        return Choice(int(winners[0]), probs, exact=False)

    @staticmethod
    def greedy(scores: FloatArray) -> Choice:
        """A deterministic argmax: propensity 1 for the best, exactly."""
        probs = np.zeros(scores.shape[0], dtype=np.float32)
        index = int(np.argmax(scores))
        probs[index] = 1.0
        return Choice(index, probs, exact=True)

    @staticmethod
    def sample(probs: FloatArray, rng: np.random.Generator, exact: bool = True) -> Choice:
        """Draw the choice from ``probs`` (so the logged propensity is the real one)."""
        cum = np.cumsum(probs, dtype=np.float64)
        index = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        index = min(index, probs.shape[0] - 1)
        if probs[index] <= 0:  # float rounding at the very top: take a real option
            index = int(np.argmax(probs))
        return Choice(index, probs, exact)

    def gaussian_view(self, c: Candidates, rng: np.random.Generator,
                      scores: Callable[[], tuple[FloatArray, FloatArray]]) -> Choice:
        """:meth:`gaussian` on the ``(mean, sd)`` that ``scores`` computes from the view alone,
        computed once per view: ``Loop.rank`` serves one view to every visitor with the same
        context until the model is republished, and decisions drawn from shared score arrays
        share one propensity integral (:func:`resolve_choices`)."""
        found = c.memo.get(self.name)
        if found is None:
            mean, sd = gaussian_scores(*scores())
            small = (mean.tolist(), sd.tolist()) if 1 < mean.shape[0] <= SMALL_K else None
            found = c.memo[self.name] = (mean, sd, small)
        mean, sd, small = found
        if small is None:
            return self.gaussian(mean, sd, rng, ready=True)
        # A few actions: the same draw on Python floats, without a numpy call per decision.
        means, sds = small
        z = self._normals(rng).take(len(means))
        index, best = 0, -math.inf
        for i, (m, d, e) in enumerate(zip(means, sds, z, strict=True)):
            score = m + d * e  # as numpy computes mean + sd * z: the same float
            if score > best:  # the first of equal scores, as argmax
                index, best = i, score
        return gaussian_choice(mean, sd, index)

    def of_counts(self, c: Candidates, derive: Callable[[FloatArray, FloatArray], Any]) -> Any:
        """``derive(c.counts, c.successes)``, computed once per pair of arrays: the loop's own
        actions share one counts array per published state, whatever the context, so the
        views of many contexts need it once. The arrays are never changed once published."""
        last = self._of_counts
        if last is not None and last[0] is c.counts and last[1] is c.successes:
            return last[2]
        derived = derive(c.counts, c.successes)
        self._of_counts = (c.counts, c.successes, derived)
        return derived

    def _normals(self, rng: np.random.Generator) -> Normals:
        normals = self._normal_stream
        if normals is None or normals.rng is not rng:
            normals = self._normal_stream = Normals(rng)
        return normals

    def gaussian(self, mean: FloatArray | Float64Array, sd: FloatArray | Float64Array,
                 rng: np.random.Generator, *, ready: bool = False) -> Choice:
        """Thompson sampling with independent scores ``N(mean_a, sd_a^2)``: one draw per
        action chooses; the win probabilities are computed on demand. ``ready``: ``mean``
        and ``sd`` are float64 already and ``sd`` >= 1e-9 (see :func:`gaussian_scores`)."""
        if ready:
            mu, sigma = cast("Float64Array", mean), cast("Float64Array", sd)
        else:
            mu, sigma = gaussian_scores(mean, sd)
        k = mu.shape[0]
        if k == 1:
            return Choice(0, np.ones(1, dtype=np.float32))
        index = int((mu + sigma * rng.standard_normal(k)).argmax())
        return gaussian_choice(mu, sigma, index)


class Normals:
    """Standard normal draws from ``rng``, drawn :data:`NORMALS_CHUNK` at a time and handed
    out ``k`` at a time: the same numbers in the same order as one ``rng.standard_normal(k)``
    per call, as long as nothing else draws from ``rng`` meanwhile (Gaussian Thompson
    sampling draws nothing else)."""

    __slots__ = ("_at", "_buffer", "rng")

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._buffer: list[float] = []
        self._at = 0

    def take(self, k: int) -> list[float]:
        at = self._at
        if at + k > len(self._buffer):
            fresh: list[float] = self.rng.standard_normal(max(NORMALS_CHUNK, k)).tolist()
            self._buffer = self._buffer[at:] + fresh
            at = 0
        self._at = at + k
        return self._buffer[at : at + k]


def gaussian_scores(mean: FloatArray | Float64Array,
                    sd: FloatArray | Float64Array) -> tuple[Float64Array, Float64Array]:
    """Means and standard deviations as :meth:`Policy.gaussian` draws from them."""
    return np.asarray(mean, dtype=np.float64), np.maximum(sd, 1e-9, dtype=np.float64)


def resolve_choices(choices: Iterable[Choice]) -> None:
    """Compute the probabilities of many choices at once (the learner logs decisions in
    batches): one computation per distinct set of arguments, and for Gaussian choices over up
    to ``MAX_EXACT`` actions one vectorised integral per action count."""
    # Decisions drawn from one cached view (Loop.rank), or from one published state
    # (bernoulli-ts), share their argument arrays: one integral serves them all. The arrays
    # are alive while the choices hold them, so their ids name them.
    shared: dict[tuple[int, int], tuple[Float64Array, Float64Array, list[Choice]]] = {}
    others: dict[tuple[Any, ...], list[Choice]] = {}
    for choice in choices:
        if choice.resolved or choice.lazy is None:
            continue
        gaussian = choice.gaussian
        if gaussian is not None and gaussian[0].shape[0] <= MAX_EXACT:
            mu, sigma = gaussian
            shared.setdefault((id(mu), id(sigma)), (mu, sigma, []))[2].append(choice)
        else:  # pruned and integrated one argument set at a time
            name, args = choice.lazy
            others.setdefault((name, *map(id, args)), []).append(choice)
    for members in others.values():
        row = members[0].probabilities
        for each in members[1:]:
            each.resolve(row)
    groups: dict[int, list[tuple[Float64Array, Float64Array, list[Choice]]]] = {}
    for entry in shared.values():
        groups.setdefault(entry[0].shape[0], []).append(entry)
    for k, group in groups.items():
        if k <= 2:
            continue  # the closed form is as cheap one by one
        step = max(1, RESOLVE_CELLS // (k * k))  # keep the temporaries in the CPU cache
        for start in range(0, len(group), step):
            part = group[start : start + step]
            mean = np.stack([mu for mu, _, _ in part])
            sd = np.stack([sigma for _, sigma, _ in part])
            probs = gaussian_win_probabilities_many(mean, sd).astype(np.float32)
            for (_, _, members), row in zip(part, probs, strict=True):
                for each in members:
                    each.resolve(row)


def gaussian_choice(mu: Float64Array, sigma: Float64Array, index: int) -> Choice:
    """The choice of ``index`` among independent Gaussian scores ``N(mu, sigma^2)``, its
    probabilities computed later by :func:`gaussian_probabilities`."""
    return Choice(index, exact=True, lazy=("gaussian", (mu, sigma)))


def gaussian_probabilities(mu: Float64Array, sigma: Float64Array) -> FloatArray:
    """Win probabilities of independent Gaussian scores, by integration.

    Two actions: the closed form. Up to ``MAX_EXACT`` actions that can win: the integral on
    every action's quantile points; beyond, the integral on a grid at the quantiles of the
    best score (:func:`~.winprob.gaussian_win_probabilities_wide`).
    """
    k = mu.shape[0]
    if k == 2:  # P(first wins) = Phi((mu_0 - mu_1) / sqrt(sd_0^2 + sd_1^2))
        first = float(ndtr((mu[0] - mu[1]) / np.hypot(sigma[0], sigma[1])))
        return np.array([first, 1.0 - first], dtype=np.float32)
    if k <= MAX_EXACT:
        return gaussian_win_probabilities(mu, sigma).astype(np.float32)
    probs = np.zeros(k, dtype=np.float32)
    live = live_actions(mu, sigma)
    if live.size == 1:
        probs[live[0]] = 1.0
    elif live.size <= MAX_EXACT:
        probs[live] = gaussian_win_probabilities(mu[live], sigma[live])
    else:
        probs[live] = gaussian_win_probabilities_wide(mu[live], sigma[live])
    return probs


LAZY_PROPENSITIES["gaussian"] = gaussian_probabilities
