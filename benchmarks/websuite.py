"""The web-visitor simulator benchmark: conversions, lift, regret, recovery after the shift."""

from __future__ import annotations

import sys
import time
from argparse import Namespace
from typing import Any

from benchmarks.agents.engine import DEFAULT_STRATEGY
from benchmarks.learning import Run, ShiftSpec
from benchmarks.problems.websim import WebSim
from benchmarks.report import fmt, fmt_mean, paired_difference, runs_json, summary_by_agent, table
from benchmarks.report import write_json as write_results
from benchmarks.suites import agent_specs, config_dict, experiment, sizes


def _recovery_cell(values: list[float | None]) -> str:
    hit = sorted(v for v in values if v is not None)
    if not hit:
        return f"never (0/{len(values)})"
    return f"{hit[len(hit) // 2]:.0f} ({len(hit)}/{len(values)})"


def _main_table(runs: list[Run], shift: ShiftSpec) -> str:
    summary = summary_by_agent(runs)
    headers = [
        "agent",
        "conversions",
        "lift % (all)",
        "lift % before shift",
        "lift % after shift",
        f"lift % last {shift.last}",
        "rel. regret (unif=100)",
        f"post-shift regret ({shift.window})",
        "recovery visitors (median, n)",
        "ms/step",
    ]
    rows = []
    for agent, s in summary.items():
        rec = [r.metrics["recovery_visitors"] for r in runs if r.agent == agent]
        rows.append(
            [
                agent,
                fmt(s["reward"], 0),
                fmt(s["lift_pct"]),
                fmt(s["lift_pre_pct"]),
                fmt(s["lift_post_pct"]),
                fmt(s["lift_last_pct"]),
                fmt(s["relative_regret"]),
                fmt(s["post_shift_regret"]),
                _recovery_cell(rec),
                fmt_mean(s["ms_per_step"], 2),
            ]
        )
    text = table(headers, rows)
    peers = [a for a in summary if a.startswith("vw")]
    for agent in summary:
        if not agent.startswith("ef:"):
            continue
        for vw in peers:
            for key, label in (("expected_reward", "expected conversions"),
                               ("reward", "conversions"),
                               ("recovery_visitors", "recovery visitors")):
                d = paired_difference(runs, agent, vw, key)
                if d is not None:
                    text += (f"\n\n{agent} - {vw}, {label} (paired over {d.n} seeds): "
                             f"{d.fmt(1)}")
    return text


def _early_table(runs: list[Run], horizon: int, default: str) -> tuple[str, dict[str, Any]]:
    summary = summary_by_agent(runs)
    key = f"regret@{horizon}"
    rows = [
        [agent, fmt(s[key], 2), fmt(s["relative_regret"]), fmt(s["reward"], 1)]
        for agent, s in summary.items()
    ]
    text = table(["agent", f"regret@{horizon}", "rel. regret (unif=100)", "conversions"], rows)
    diffs: dict[str, Any] = {}
    for agent in summary:
        if agent not in ("uniform", "oracle", "best-fixed"):
            d = paired_difference(runs, agent, "uniform", key)
            if d is not None:
                diffs[agent] = d
                verdict = (
                    "better than uniform"
                    if d.high < 0
                    else "worse than uniform"
                    if d.low > 0
                    else "not distinguishable"
                )
                text += (
                    f"\n\n{agent} - uniform, regret@{horizon} (paired over {d.n} seeds): "
                    f"{d.fmt(2)} → {verdict} at 95%"
                )
    if default not in summary:
        text += f"\n\n(engine default strategy {default} was not run)"
    return text, diffs


def run_web(args: Namespace) -> dict[str, Any]:
    """Main run with a population shift, plus a many-seed check of the first visitors."""
    horizon, seeds = sizes(args, "web")
    problem = WebSim(shift_at=args.shift_at, shift_kind=args.shift_kind)
    shift = ShiftSpec(
        window=args.recovery_window or max(1, min(1000, horizon // 3)),
        ma_window=args.ma_window,
        tolerance=args.tolerance,
    )
    specs = agent_specs(args, "web")
    start = time.perf_counter()
    runs = experiment(problem, specs, seeds, horizon, args, shift)
    wall_main = time.perf_counter() - start
    main_text = _main_table(runs, shift)
    print(
        f"\n## web: T={horizon}, {len(seeds)} seeds, shift ({args.shift_kind}) at visitor "
        f"{problem.shift_step(horizon)}; mean ± 95% t-interval; wall {wall_main:.0f}s\n"
    )
    print(main_text + "\n")
    print(
        f"recovery = visitors after the shift until the {shift.ma_window}-visitor moving "
        f"average of expected conversions is within {shift.tolerance:.0%} of the oracle's "
        "(median over the seeds that recovered, n = how many did)\n"
    )

    early_h, early_seeds = (
        args.early_horizon,
        list(range(args.first_seed, args.first_seed + args.early_seeds)),
    )
    default = f"ef:{DEFAULT_STRATEGY}"
    early_specs = [s for s in specs if s.name in (default, "uniform") or s.kind == "vw"
                   or s.name.startswith(default + "[")]  # the default with --loop-settings
    start = time.perf_counter()
    early_runs: list[Run] = []
    early_text = "(not run: --early-seeds 0)"
    diffs: dict[str, Any] = {}
    if early_seeds:
        early_runs = experiment(WebSim(shift_kind="none"), early_specs, early_seeds, early_h,
                                args)
        early_text, diffs = _early_table(early_runs, early_h, default)
    wall_early = time.perf_counter() - start
    print(
        f"## web, first {early_h} visitors: {len(early_seeds)} seeds, no shift; "
        f"wall {wall_early:.0f}s\n\n{early_text}\n"
    )

    payload = {
        "config": {
            **config_dict(args, horizon, seeds, specs, "web"),
            "shift_kind": args.shift_kind,
            "shift_at": problem.shift_step(horizon),
            "recovery": shift.__dict__,
            "early": {
                "horizon": early_h,
                "seeds": early_seeds,
                "agents": [s.name for s in early_specs],
            },
            "lift": "expected conversions vs the best single variant in hindsight on the same "
                    "visitors (all, before and after the shift, the last visitors)",
        },
        "wall_seconds": wall_main + wall_early,
        "wall_seconds_main": wall_main,
        "wall_seconds_early": wall_early,
        "summary": summary_by_agent(runs),
        "runs": runs_json(runs),
        "table": main_text,
        "early": {
            "summary": summary_by_agent(early_runs),
            "runs": runs_json(early_runs),
            "paired_vs_uniform": diffs,
            "table": early_text,
        },
    }
    path = write_results("web" + ("-quick" if args.quick else ""), payload, args.results_dir)
    print(f"[bench] wrote {path}", file=sys.stderr)
    return payload
