"""Vowpal Wabbit ``--cb_explore_adf --squarecb -q UA`` as the reference peer.

ADF format: a shared line with the context in namespace ``U`` and one line per action with its
features in namespace ``A``. VW minimizes cost, so it learns ``cost = -reward / (hi - lo)``
(the negated reward, scaled so costs span 1), with label ``index:cost:prob`` on the chosen line.
The arm is sampled from VW's pmf with the agent's own seeded generator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from benchmarks.agents.base import AgentSpec, agent_rng
from benchmarks.problems.base import Context, FeatureValue, Problem

DEFAULT_ARGS = "--cb_explore_adf --squarecb -q UA --quiet"
_BAD = re.compile(r"[\s:|]+")


def _token(text: str) -> str:
    return _BAD.sub("_", text.strip()) or "_"


def vw_features(features: Mapping[str, FeatureValue], ints_as_categories: bool = True) -> str:
    """``key=value`` for strings, bools and (by default) ints; ``key:value`` for floats."""
    parts: list[str] = []
    for key, value in features.items():
        name = _token(key)
        if isinstance(value, bool):
            parts.append(f"{name}={int(value)}")
        elif isinstance(value, int) and ints_as_categories:
            parts.append(f"{name}={value}")
        elif isinstance(value, int | float):
            parts.append(f"{name}:{float(value):.6g}")
        else:
            parts.append(f"{name}={_token(str(value))}")
    return " ".join(parts)


def action_lines(actions: Sequence[Mapping[str, FeatureValue]]) -> list[str]:
    return [f"|A {vw_features(a)}" for a in actions]


class VWAgent:
    """One VW workspace per run, seeded with ``--random_seed``."""

    def __init__(self, problem: Problem, seed: int, args: str = DEFAULT_ARGS) -> None:
        import vowpalwabbit

        self._vw = vowpalwabbit.Workspace(f"{args} --random_seed {seed}")
        self._actions = action_lines([a.features for a in problem.actions])
        lo, hi = problem.reward_range
        self._scale = 1.0 / (hi - lo)
        self._rng = agent_rng("vw", seed)
        self._last: tuple[str, int, float] | None = None

    def act(self, context: Context) -> tuple[int, float]:
        shared = f"shared |U {vw_features(context)}"
        pmf = self._vw.predict([shared, *self._actions])
        total = float(sum(pmf))
        arm = int(self._rng.choice(len(pmf), p=[p / total for p in pmf]))
        prob = float(pmf[arm]) / total
        self._last = (shared, arm, prob)
        return arm, prob

    def learn(self, reward: float) -> None:
        if self._last is None:
            raise RuntimeError("learn() before act()")
        shared, arm, prob = self._last
        lines = [shared, *self._actions]
        cost = -reward * self._scale
        lines[arm + 1] = f"{arm}:{cost:.6g}:{max(prob, 1e-6):.6g} {self._actions[arm]}"
        self._vw.learn(lines)
        self._last = None

    def close(self) -> None:
        self._vw.finish()


def vw_spec(args: str = DEFAULT_ARGS) -> AgentSpec:
    name = "vw-squarecb" if args == DEFAULT_ARGS else f"vw[{args}]"
    return AgentSpec(name, lambda problem, seed: VWAgent(problem, seed, args), "vw")


# VW's learning rate and SquareCB's gamma scale per problem, chosen on development seeds 0-7
# by ``python -m benchmarks.vw_tune <problem>`` (-l 0.03-8 by --gamma_scale 10-3000, with the
# issue's -q UA; docs/benchmarks.md, "A tuned VW"): the engine's settings were tuned on
# development seeds, and its peer is given the same. VW's own defaults are -l 0.5 and 10.
TUNED = {"mushroom": "-l 0.1 --gamma_scale 30", "magic": "-l 1 --gamma_scale 1000",
         "web": "-l 0.1 --gamma_scale 1000"}


def tuned_vw_args(problem: str) -> str:
    return f"{DEFAULT_ARGS} {TUNED[problem]}"


def tuned_vw_spec(problem: str) -> AgentSpec:
    """``vw-tuned``: VW with ``problem``'s settings from :data:`TUNED`."""
    args = tuned_vw_args(problem)
    return AgentSpec("vw-tuned", lambda p, seed: VWAgent(p, seed, args), "vw")
