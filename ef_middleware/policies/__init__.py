"""Exploration policies, one per file; :func:`make_policy` builds one from a strategy name."""

from __future__ import annotations

from typing import Any

from .._types import STRATEGIES, Strategy
from ..decision import Choice
from ..errors import ConfigurationError
from .base import Candidates, Policy, resolve_choices
from .bernoulli import BernoulliThompson
from .dropout import DropoutThompson
from .epsilon_greedy import EpsilonGreedy
from .laplace import Laplace
from .neural_linear import NeuralLinear
from .squarecb import SquareCB
from .thompson import Thompson
from .ucb import UCB
from .uniform import Uniform

POLICIES: dict[str, type[Policy]] = {
    "laplace": Laplace,
    "thompson": Thompson,
    "thompson-dropout": DropoutThompson,
    "neural-linear": NeuralLinear,
    "ucb": UCB,
    "squarecb": SquareCB,
    "epsilon-greedy": EpsilonGreedy,
    "uniform": Uniform,
    "bernoulli-ts": BernoulliThompson,
}


def make_policy(strategy: Strategy | str, options: dict[str, Any] | None = None) -> Policy:
    """Build the policy for ``strategy`` with its keyword ``options`` (e.g. ``epsilon``)."""
    cls = POLICIES.get(strategy)
    if cls is None:
        raise ConfigurationError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    try:
        return cls(**(options or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"strategy {strategy!r}: bad options {options}: {exc}") from exc


__all__ = [
    "POLICIES",
    "UCB",
    "BernoulliThompson",
    "Candidates",
    "Choice",
    "DropoutThompson",
    "EpsilonGreedy",
    "Laplace",
    "NeuralLinear",
    "Policy",
    "SquareCB",
    "Thompson",
    "Uniform",
    "make_policy",
    "resolve_choices",
]
