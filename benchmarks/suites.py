"""The learning benchmarks: Mushroom, MAGIC and the web-visitor simulator."""

from __future__ import annotations

import sys
import time
from argparse import Namespace
from collections.abc import Sequence
from typing import Any

from benchmarks.agents.base import UNIFORM, AgentSpec
from benchmarks.agents.engine import engine_spec, engine_unavailable
from benchmarks.agents.vw import tuned_vw_args, tuned_vw_spec, vw_spec
from benchmarks.learning import Run, ShiftSpec, run_experiment
from benchmarks.problems.base import Problem
from benchmarks.problems.uci import Magic, Mushroom
from benchmarks.progress import Progress
from benchmarks.report import fmt, fmt_mean, runs_json, summary_by_agent, table
from benchmarks.report import write_json as write_results

# (horizon, seeds) per benchmark: full and --quick.
DEFAULTS = {
    "mushroom": ((10000, 5), (1500, 2)),
    "magic": ((10000, 5), (1500, 2)),
    "web": ((20000, 5), (4000, 2)),
}


def agent_specs(args: Namespace, problem: str | None = None) -> list[AgentSpec]:
    """Engine strategies (when the engine imports), uniform and VW, as the flags select: VW
    as ``--vw-args`` says (its defaults unless told), and VW tuned for ``problem``."""
    specs: list[AgentSpec] = []
    if args.strategies:
        reason = engine_unavailable()
        if reason is None:
            specs += [engine_spec(s, args.flush_every, args.sync_learner,
                                  getattr(args, "loop_settings", {}))
                      for s in args.strategies]
        else:
            print(f"[bench] engine not available, skipping it ({reason})", file=sys.stderr)
    specs.append(UNIFORM)
    if not args.no_vw:
        specs.append(vw_spec(args.vw_args))
        if problem is not None and not getattr(args, "no_tuned_vw", False):
            specs.append(tuned_vw_spec(problem))
    return specs


def sizes(args: Namespace, name: str) -> tuple[int, list[int]]:
    full, quick = DEFAULTS[name]
    horizon, n_seeds = quick if args.quick else full
    horizon = args.horizon or horizon
    n_seeds = args.seeds or n_seeds
    return horizon, list(range(args.first_seed, args.first_seed + n_seeds))


def _checkpoints(horizon: int) -> list[int]:
    return sorted({c for c in (200, 500, 1000, 2000, 5000, 10000, horizon) if c <= horizon})


def experiment(
    problem: Problem,
    specs: Sequence[AgentSpec],
    seeds: list[int],
    horizon: int,
    args: Namespace,
    shift: ShiftSpec | None = None,
) -> list[Run]:
    bar = Progress(len(seeds) * len(specs) * horizon, problem.name, not args.no_progress)
    try:
        return run_experiment(problem, specs, seeds, horizon, _checkpoints(horizon), shift, bar)
    finally:
        bar.close()


def config_dict(
    args: Namespace, horizon: int, seeds: list[int], specs: Sequence[AgentSpec],
    problem: str | None = None,
) -> dict[str, Any]:
    tuned = (tuned_vw_args(problem) if problem is not None
             and any(s.name == "vw-tuned" for s in specs) else None)
    return {
        "quick": args.quick,
        "horizon": horizon,
        "seeds": seeds,
        "agents": [s.name for s in specs],
        "flush_every": args.flush_every,
        "sync_learner": args.sync_learner,
        "vw_args": args.vw_args,
        "vw_tuned_args": tuned,
        "regret": "expected payoffs; uniform = expected regret of a "
        "uniform random policy on the same stream",
    }


def run_uci(args: Namespace, name: str) -> dict[str, Any]:
    """Mushroom or MAGIC: regret relative to uniform = 100, mean ± 95% t-interval over seeds."""
    problem: Problem = Mushroom() if name == "mushroom" else Magic()
    horizon, seeds = sizes(args, name)
    specs = agent_specs(args, name)
    start = time.perf_counter()
    runs = experiment(problem, specs, seeds, horizon, args)
    wall = time.perf_counter() - start
    summary = summary_by_agent(runs)
    mid = 1000 if horizon > 1000 else 200
    headers = [
        "agent",
        "rel. regret (unif=100)",
        "cum. regret",
        f"regret@{mid}",
        "optimal arm %",
        "reward",
        "ms/step",
        "setup s",
    ]
    rows = []
    for agent, s in summary.items():
        opt = s["optimal_rate"]
        rows.append(
            [
                agent,
                fmt(s["relative_regret"]),
                fmt(s["regret"], 0),
                fmt(s.get(f"regret@{mid}"), 0),
                f"{100 * opt.mean:.1f}",
                fmt(s["reward"], 0),
                fmt_mean(s["ms_per_step"], 2),
                fmt_mean(s["setup_seconds"], 1) if s["seconds"].mean else "-",
            ]
        )
    text = table(headers, rows)
    title = f"{name}: T={horizon}, {len(seeds)} seeds, mean ± 95% t-interval; wall {wall:.0f}s"
    print(f"\n## {title}\n\n{text}\n")
    payload = {
        "config": config_dict(args, horizon, seeds, specs, name),
        "wall_seconds": wall,
        "summary": summary,
        "runs": runs_json(runs),
        "table": text,
    }
    path = write_results(name + ("-quick" if args.quick else ""), payload, args.results_dir)
    print(f"[bench] wrote {path}", file=sys.stderr)
    return payload
