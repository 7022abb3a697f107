"""Agents that play the bandit problems: the engine, Vowpal Wabbit and simple baselines."""

from __future__ import annotations

from benchmarks.agents.base import Agent, AgentSpec

__all__ = ["Agent", "AgentSpec"]
