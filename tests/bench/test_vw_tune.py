"""The VW peers: the grid ``benchmarks.vw_tune`` searches, and the tuned peer the learning
benchmarks run beside VW's defaults."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

from benchmarks.agents.vw import DEFAULT_ARGS, TUNED, tuned_vw_args
from benchmarks.suites import agent_specs
from benchmarks.vw_tune import main, settings


def test_the_grid_spells_vw_defaults_as_the_benchmark_does() -> None:
    grid = settings([0.1, 0.5], [10.0, 30.0], "")
    assert grid == [f"{DEFAULT_ARGS} -l 0.1", f"{DEFAULT_ARGS} -l 0.1 --gamma_scale 30",
                    DEFAULT_ARGS, f"{DEFAULT_ARGS} --gamma_scale 30"]
    assert settings([0.5], [10.0], "--interactions UUA") == [f"{DEFAULT_ARGS} --interactions UUA"]


def test_the_learning_benchmarks_run_both_vw_peers() -> None:
    args = Namespace(strategies=[], no_vw=False, vw_args=DEFAULT_ARGS, no_tuned_vw=False)
    for problem in ("mushroom", "magic", "web"):
        names = [s.name for s in agent_specs(args, problem)]
        assert names == ["uniform", "vw-squarecb", "vw-tuned"]
        assert tuned_vw_args(problem) == f"{DEFAULT_ARGS} {TUNED[problem]}"
    args.no_tuned_vw = True
    assert [s.name for s in agent_specs(args, "magic")] == ["uniform", "vw-squarecb"]
    args.no_vw = True
    assert [s.name for s in agent_specs(args, "magic")] == ["uniform"]


def test_a_small_search_ranks_every_setting_by_its_regret(tmp_path: Path) -> None:
    out = tmp_path / "tune.json"
    assert main(["web", "--seeds", "2", "--horizon", "600", "--rates", "0.1,2",
                 "--gammas", "10", "--no-progress", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ranked = result["settings"]
    assert {r["agent"] for r in ranked} == {f"vw[{DEFAULT_ARGS} -l 0.1]",
                                             f"vw[{DEFAULT_ARGS} -l 2]"}
    means = [sum(r["relative_regret"].values()) / 2 for r in ranked]
    assert means == sorted(means) and all(set(r["relative_regret"]) == {"0", "1"}
                                          for r in ranked)
