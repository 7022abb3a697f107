"""Run agents on seeded streams and turn their choices into regret and conversion metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from benchmarks.agents.base import AgentSpec
from benchmarks.problems.base import Problem, Stream
from benchmarks.progress import Progress

IntArray = npt.NDArray[np.int64]
Metrics = dict[str, float | None]


@dataclass
class Run:
    """One agent on one seed's stream: the arm it chose at every step, and its wall-clock."""

    agent: str
    kind: str
    seed: int
    arms: IntArray
    seconds: float  # stepping through the stream (act + learn), without setup
    setup_seconds: float = 0.0  # building the agent and closing it
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class ShiftSpec:
    """Recovery after the population shift: a post-shift window and the recovery criterion."""

    window: int = 1000  # visitors after the shift over which regret and conversions are summed
    ma_window: int = 200  # trailing moving-average window for the recovery time
    tolerance: float = 0.2  # recovered when MA expected reward >= (1 - tolerance) x oracle's MA
    last: int = 2000  # the closing window of the run, for the lift "after T visitors"


def play(spec: AgentSpec, problem: Problem, stream: Stream, seed: int, tick: Progress) -> Run:
    """Let one fresh agent play ``stream``; reward = realized payoff of the chosen arm."""
    start = time.perf_counter()
    agent = spec.make(problem, seed)
    arms = np.zeros(stream.horizon, dtype=np.int64)
    begin = time.perf_counter()
    try:
        for t, context in enumerate(stream.contexts):
            arm, _prob = agent.act(context)
            agent.learn(float(stream.realized[t, arm]))
            arms[t] = arm
            tick(1)
        end = time.perf_counter()
    finally:
        agent.close()
    setup = time.perf_counter() - start - (end - begin)
    return Run(spec.name, spec.kind, seed, arms, end - begin, setup)


def reference_runs(stream: Stream, seed: int) -> list[Run]:
    """The oracle and the best single arm in hindsight (by expected payoff on this stream)."""
    fixed = int(np.argmax(stream.expected.sum(axis=0)))
    return [
        Run("oracle", "reference", seed, stream.oracle_arm, 0.0),
        Run("best-fixed", "reference", seed, np.full(stream.horizon, fixed, dtype=np.int64), 0.0),
    ]


def _recovery(
    gap: npt.NDArray[np.float64], oracle: npt.NDArray[np.float64], shift: int, spec: ShiftSpec
) -> float | None:
    """Visitors after the shift until the trailing-MA expected reward is within tolerance."""
    w = spec.ma_window
    if shift + w > len(gap):
        return None
    got = np.cumsum(np.concatenate([[0.0], (oracle - gap)[shift:]]))
    best = np.cumsum(np.concatenate([[0.0], oracle[shift:]]))
    ends = np.arange(w, len(got))
    ok = (got[ends] - got[ends - w]) >= (1 - spec.tolerance) * (best[ends] - best[ends - w])
    hits = np.flatnonzero(ok)
    return float(ends[hits[0]]) if hits.size else None


def _lift(chosen: npt.NDArray[np.float64], expected: npt.NDArray[np.float64]) -> float | None:
    """Expected reward of the choices over the best single arm's on the same steps, in %."""
    best = float(expected.sum(axis=0).max())
    return 100.0 * (float(chosen.sum()) / best - 1.0) if best > 0 else None


def metrics(
    run: Run, stream: Stream, checkpoints: Sequence[int], shift: ShiftSpec | None = None
) -> Metrics:
    """Expected-payoff regret (relative to uniform = 100), rewards, and post-shift recovery."""
    t = np.arange(stream.horizon)
    chosen = stream.expected[t, run.arms]
    oracle = stream.oracle_expected
    gap = oracle - chosen
    regret = np.cumsum(gap)
    uniform = float((oracle - stream.expected.mean(axis=1)).sum())
    out: Metrics = {
        "regret": float(regret[-1]),
        "relative_regret": 100.0 * float(regret[-1]) / uniform if uniform > 0 else None,
        "uniform_expected_regret": uniform,
        "reward": float(stream.realized[t, run.arms].sum()),
        "expected_reward": float(chosen.sum()),
        "optimal_rate": float((gap <= 1e-12).mean()),
        "ms_per_step": 1000.0 * run.seconds / stream.horizon if run.seconds else None,
    }
    for c in checkpoints:
        if 0 < c <= stream.horizon:
            out[f"regret@{c}"] = float(regret[c - 1])
    out["lift_pct"] = _lift(chosen, stream.expected)
    out["oracle_lift_pct"] = _lift(oracle, stream.expected)
    if shift is not None:
        at = int(stream.meta.get("shift_at", stream.horizon))  # type: ignore[call-overload]
        out["lift_pre_pct"] = _lift(chosen[:at], stream.expected[:at]) if at > 0 else None
        out["lift_post_pct"] = (_lift(chosen[at:], stream.expected[at:])
                                if at < stream.horizon else None)
        last = max(0, stream.horizon - shift.last)
        out["lift_last_pct"] = _lift(chosen[last:], stream.expected[last:])
        end = min(stream.horizon, at + shift.window)
        out["post_shift_regret"] = float(gap[at:end].sum()) if end > at else None
        out["post_shift_reward"] = float(stream.realized[t, run.arms][at:end].sum())
        out["recovery_visitors"] = _recovery(gap, oracle, at, shift)
        lo = max(0, at - shift.ma_window)
        out["within_tolerance_before_shift"] = float(
            at > lo and chosen[lo:at].sum() >= (1 - shift.tolerance) * oracle[lo:at].sum()
        )
    return out


def run_experiment(
    problem: Problem,
    agents: Sequence[AgentSpec],
    seeds: Sequence[int],
    horizon: int,
    checkpoints: Sequence[int],
    shift: ShiftSpec | None = None,
    progress: Progress | None = None,
    on_stream: Callable[[int, Stream], None] | None = None,
) -> list[Run]:
    """Every agent on every seed's stream (the same stream for all agents of a seed)."""
    tick = progress or Progress.null()
    runs: list[Run] = []
    for seed in seeds:
        stream = problem.stream(seed, horizon)
        if on_stream is not None:
            on_stream(seed, stream)
        seed_runs = [play(spec, problem, stream, seed, tick) for spec in agents]
        seed_runs += reference_runs(stream, seed)
        for run in seed_runs:
            run.metrics = metrics(run, stream, checkpoints, shift)
        runs.extend(seed_runs)
    return runs
