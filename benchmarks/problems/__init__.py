"""Bandit problems: each builds seeded streams of contexts with expected and realized payoffs."""

from __future__ import annotations

from benchmarks.problems.base import Action, Context, Problem, Stream

__all__ = ["Action", "Context", "Problem", "Stream"]
