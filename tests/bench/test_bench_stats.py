"""The statistics the benchmark reports rest on: intervals, percentiles, pairing, recovery,
and the web-throughput summary (checked against scipy and numpy, or by hand)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import pytest
from scipy import stats

from benchmarks.host import (
    PROBE_SLEEP,
    CpuTicks,
    blas_probe,
    cpu_model,
    cpu_probe,
    parse_memory,
    parse_proc_stat,
    percent,
    probe_work,
    process_memory,
    steal_share,
)
from benchmarks.learning import Run, ShiftSpec, _recovery
from benchmarks.paired import collect
from benchmarks.recovery import pair
from benchmarks.report import paired_difference
from benchmarks.stats import percentile, summarize, t95
from benchmarks.web_throughput import compare_report, summarise


def test_t95_is_students_critical_value() -> None:
    for df in range(1, 31):
        assert t95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)
    for df in range(31, 400):  # the approximation past the table: within 0.01, as documented
        assert abs(t95(df) - stats.t.ppf(0.975, df)) < 0.01
    assert math.isnan(t95(0))


def test_summarize_is_the_mean_with_a_95_percent_t_interval() -> None:
    rng = np.random.default_rng(3)
    for n in (2, 5, 20, 60):
        values = rng.normal(10.0, 3.0, n)
        s = summarize(values)
        half = stats.t.ppf(0.975, n - 1) * stats.sem(values)
        assert s.mean == pytest.approx(values.mean())
        assert s.ci == pytest.approx(half, rel=5e-3)
        assert (s.low, s.high) == pytest.approx((s.mean - s.ci, s.mean + s.ci))
    one = summarize([4.0])
    assert one.mean == 4.0 and math.isnan(one.ci) and one.fmt() == "4.0"
    assert summarize([]).n == 0


def test_percentile_interpolates_as_numpy() -> None:
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 100):
        values = sorted(rng.exponential(1.0, n))
        for q in (0, 1, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert math.isnan(percentile([], 50))


def test_paired_difference_pairs_by_seed_and_skips_missing() -> None:
    empty = np.zeros(0, dtype=np.int64)

    def run(agent: str, seed: int, value: float | None) -> Run:
        return Run(agent, "engine", seed, empty, 0.0, metrics={"m": value})

    runs = [run("a", 1, 10.0), run("b", 1, 7.0), run("a", 2, 5.0), run("b", 2, 6.0),
            run("a", 3, 1.0), run("b", 3, None), run("b", 4, 2.0)]
    diff = paired_difference(runs, "a", "b", "m")
    assert diff is not None
    assert sorted(diff.values) == [-1.0, 3.0]  # seeds 1 and 2 only
    assert diff.mean == 1.0
    assert paired_difference(runs, "a", "c", "m") is None


def test_recovery_is_the_first_full_window_within_tolerance() -> None:
    spec = ShiftSpec(ma_window=200, tolerance=0.2)
    shift, horizon = 1000, 3000
    oracle = np.ones(horizon)
    for lost in (0, 100, 500):  # the agent earns nothing for `lost` visitors after the shift
        gap = np.zeros(horizon)
        gap[shift:shift + lost] = 1.0
        # The trailing 200 must hold at least 160 good visitors: max(200, lost + 160).
        assert _recovery(gap, oracle, shift, spec) == max(200, lost + 160)
    never = np.zeros(horizon)
    never[shift:] = 1.0
    assert _recovery(never, oracle, shift, spec) is None
    assert _recovery(np.zeros(horizon), oracle, horizon - 100, spec) is None  # too late


def _burst(rps: float, cpu_us: float) -> dict[str, Any]:
    return {"rps": rps, "p50": 1.0, "p99": 2.0, "non_2xx": 0, "server": {"p50": 0.3, "p99": 0.9},
            "cpu_us_process": cpu_us, "cpu_us_loop": cpu_us}


def _reward(p99: float, steal: float | None = None, probe: dict[str, float] | None = None,
            peer_p99: float | None = None) -> dict[str, Any]:
    peer = None if peer_p99 is None else {"p50": 1.0, "p99": 2.0,
                                          "server": {"p50": 0.2, "p99": peer_p99}}
    fixed = {"p50": 1.0, "p99": 3.0, "non_2xx": 0, "server": {"p50": 0.5, "p99": p99},
             "steal": steal, "probe": probe, "peer": peer}
    return {"saturated": _burst(1000.0, math.nan), "fixed": fixed}


def test_web_summary_takes_shares_within_rounds_and_more_reward_runs_than_rounds() -> None:
    modes = ("bare", "new visitor")
    rounds: list[dict[str, Any]] = [
        {"bare": _burst(1000.0, 300.0), "new visitor": _burst(800.0, 400.0)},
        {"bare": _burst(2000.0, 150.0), "new visitor": _burst(1000.0, 300.0)},
        {"bare": _burst(1500.0, 200.0), "new visitor": _burst(900.0, 250.0)},
    ]
    for r, steal in zip(rounds, (0.01, None, 0.03), strict=True):
        r["steal"] = steal  # None: not measured (no /proc/stat)
    rounds[0]["reward"] = _reward(1.5, 0.02, {"p50": 80.0, "p99": 150.0}, 0.9)
    rounds[1]["reward"] = _reward(2.0)  # no steal time, probe or peer (an older result file)
    rounds.append({"reward": _reward(2.5, 0.10, {"p50": 120.0, "p99": 450.0}, 1.5)})  # a
    # reward run beyond the page rounds
    fixed: dict[str, dict[str, Any]] = {
        m: {"p50": 1.0, "p99": 2.0, "non_2xx": 0, "server": {"p50": 0.4, "p99": 1.0}}
        for m in modes}
    fixed["new visitor"]["memory_mb"] = {"rss": 120.0, "peak": 130.0}  # bare: not read
    summary = summarise(rounds, fixed, modes)
    new = summary["new visitor"]
    assert (new["rss_mb"], new["peak_rss_mb"]) == (120.0, 130.0)
    assert "rss_mb" not in summary["bare"] and "rss_mb" not in summary["reward"]
    assert new["share"] == pytest.approx(0.6)  # median of 0.8, 0.5, 0.6: not 900 / 1500
    assert new["cpu_share"] == pytest.approx(0.75)  # median of 0.75, 0.5, 0.8
    assert new["rps"] == 900.0
    assert summary["reward"]["server_p99"] == pytest.approx(2.0)  # median of 1.5, 2.0, 2.5
    assert summary["reward"]["server_p99_worst"] == 2.5
    assert summary["reward"]["probe_p50"] == pytest.approx(100.0)
    assert summary["reward"]["probe_p99"] == pytest.approx(300.0)
    assert "probe_p50" not in new
    assert summary["reward"]["peer_p99"] == pytest.approx(1.2)  # the two runs with a peer
    assert summary["reward"]["peer_p50"] == pytest.approx(0.2) and "peer_p99" not in new
    assert summary["reward"]["peer_gap_p99"] == pytest.approx(0.8)  # median of 0.6 and 1.0
    assert new["steal"] == pytest.approx(0.02) and new["steal_max"] == 0.03
    assert summary["reward"]["steal"] == pytest.approx(0.06)
    assert summary["reward"]["steal_max"] == 0.10


def test_steal_time_is_the_stolen_share_of_all_cpu_ticks() -> None:
    before = parse_proc_stat("cpu  4707391 227858 361443 7406120 92966 0 30658 276284 0 0\n"
                             "cpu0 1 2 3 4 5 6 7 8 0 0\nintr 1 2\n")
    after = parse_proc_stat("cpu  4709318 227858 361558 7414603 92975 0 30662 276334 9 0\n")
    assert before == CpuTicks(total=13102720, steal=276284)
    assert after is not None and after.steal == 276334
    share = steal_share(before, after)  # guest time (9) is in user time already
    assert share == pytest.approx(50 / (1927 + 115 + 8483 + 9 + 4 + 50))
    assert percent(share) == "0.5%" and percent(None) == "n/a"
    assert steal_share(after, before) is None and steal_share(None, after) is None
    assert parse_proc_stat("intr 1 2\n") is None


def test_a_server_memory_is_read_from_its_proc_status() -> None:
    status = ("Name:\tpython\nVmPeak:\t 900000 kB\nVmHWM:\t  204800 kB\n"
              "VmRSS:\t  153600 kB\nThreads:\t4\n")
    assert parse_memory(status) == {"rss": 150.0, "peak": 200.0}
    assert parse_memory("Name:\tpython\nVmRSS:\t 1 kB\n") is None  # no peak
    assert parse_memory("VmHWM:\t 2 MB\nVmRSS:\t 1 MB\n") is None  # not kB
    own = process_memory(os.getpid())
    assert own is not None and 0 < own["rss"] <= own["peak"]
    assert process_memory(2**22 + 1) is None  # above Linux's highest process id


def test_the_cpu_probe_times_only_the_work_after_each_sleep_on_the_cpu_given() -> None:
    home = os.sched_getaffinity(0)
    cpu = max(home)
    slept: list[float] = []
    seen: list[set[int]] = []

    def work() -> None:  # 0.5 ms of busy waiting, wherever it runs
        seen.append(os.sched_getaffinity(0))
        end = time.perf_counter() + 0.0005
        while time.perf_counter() < end:
            pass

    probe = cpu_probe({cpu}, calls=20, work=work, sleep=slept.append)
    assert slept == [PROBE_SLEEP] * 20  # a sleep before each call, not timed
    assert seen == [{cpu}] * 20
    assert os.sched_getaffinity(0) == home  # moved back
    assert 500 <= probe["p50"] <= probe["p99"] < 50_000
    assert probe_work() == probe_work() > 0  # the same work every time


def test_the_environment_names_the_cpu_and_times_numpys_blas() -> None:
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
            "flags\t\t: fpu avx2\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(text) == "AMD EPYC 7B13"
    assert cpu_model("processor\t: 0\n") is None
    blas = blas_probe(calls=3)
    assert blas["internal_api"] in ("openblas", "mkl", "blis")
    assert 0 < blas["sgemm_1000x256x128_ms"] < 1000
    unwarmed = blas["sgemm_1000x256x128_unwarmed_ms"]  # None once this process warmed BLAS
    assert unwarmed is None or 0 < unwarmed < 1000


def test_compare_report_gives_the_paired_difference_and_its_standard_error() -> None:
    shares = [(0.70, 0.60), (0.65, 0.66), (0.80, 0.72)]
    rounds = [{"bare": _burst(1000.0, 1.0), "new visitor": _burst(1000.0 * a, 1.0),
               "new visitor @x": _burst(1000.0 * b, 1.0)} for a, b in shares]
    text = compare_report(rounds, "new visitor @x")
    diffs = [100 * (a - b) for a, b in shares]
    se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs)))
    assert f"difference {np.mean(diffs):+.1f} points (standard error {se:.1f})" in text
    assert "ahead in 2 of 3 rounds" in text
    assert compare_report([{"bare": _burst(1.0, 1.0)}], "new visitor @x") == ""


def _web_result(seeds: range, recoveries: dict[str, list[float | None]]) -> dict[str, Any]:
    runs = [{"agent": agent, "seed": seed, "metrics": {"recovery_visitors": values[i]}}
            for agent, values in recoveries.items() for i, seed in enumerate(seeds)]
    return {"config": {"horizon": 2000, "shift_at": 1000}, "runs": runs}


def test_the_recovery_test_pairs_by_seed_and_counts_never_as_past_the_end() -> None:
    ours = [300.0, 420.0, None, 250.0, 800.0, 310.0]
    vw = [500.0, 400.0, 700.0, 650.0, None, 310.0]
    first = _web_result(range(10, 13), {"ef:thompson": ours[:3], "vw-squarecb": vw[:3],
                                        "uniform": [None] * 3})
    second = _web_result(range(13, 16), {"vw-squarecb": vw[3:], "ef:thompson": ours[3:]})
    test = pair([second, first], "ef:thompson", "vw-squarecb")
    assert test.seeds == tuple(range(10, 16))
    assert test.agent == (300.0, 420.0, 1001.0, 250.0, 800.0, 310.0)  # never: 1,000 + 1
    assert test.peer == (500.0, 400.0, 700.0, 650.0, 1001.0, 310.0)
    assert list(test.differences) == [-200.0, 20.0, 301.0, -400.0, -201.0, 0.0]
    # scipy's default test: the tie is dropped, five pairs remain
    assert test.p_value == pytest.approx(stats.wilcoxon(test.agent, test.peer).pvalue)
    assert not test.faster()  # five pairs cannot reach p < 0.05
    assert "faster on 3, slower on 2, 1 ties" in test.report()


def test_the_recovery_rule_needs_significance_and_the_right_sign() -> None:
    seeds = range(20)
    quick = _web_result(seeds, {"a": [100.0 + i for i in seeds], "b": [400.0 + i for i in seeds]})
    assert pair([quick], "a", "b").faster()
    assert not pair([quick], "b", "a").faster()  # significant, but slower
    same = _web_result(seeds, {"a": [100.0] * 20, "b": [100.0] * 20})
    assert pair([same], "a", "b").p_value == 1.0
    with pytest.raises(ValueError, match="appears twice"):
        pair([quick, quick], "a", "b")


def test_paired_comparison_reads_agents_from_several_files_and_either_block() -> None:
    main = {"runs": [{"agent": "a", "seed": s, "metrics": {"relative_regret": 4.0 + s}}
                     for s in range(3)], "early": None}
    peer = {"runs": [{"agent": "vw", "seed": s, "metrics": {"relative_regret": 10.0}}
                     for s in range(4)],
            "early": {"runs": [{"agent": "a", "seed": 0, "metrics": {"regret": 1.0}},
                               {"agent": "u", "seed": 0, "metrics": {"regret": 3.0}}]}}
    test = collect([main, peer], "a", "vw", "relative_regret")
    assert test.seeds == (0, 1, 2)  # seed 3 has only the peer
    assert list(test.differences) == [-6.0, -5.0, -4.0]
    assert test.summary.mean == -5.0
    assert test.summary.ci == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert test.interval() == "below zero"
    assert collect([main, peer], "vw", "a", "relative_regret").interval() == "above zero"
    assert "lower on 3, higher on 0, 0 ties" in test.report()
    close = {"runs": [{"agent": "vw", "seed": s, "metrics": {"relative_regret": 7.0}}
                      for s in range(3)]}
    assert collect([main, close], "a", "vw", "relative_regret").interval() == "includes zero"
    early = collect([main, peer], "a", "u", "regret", block="early")
    assert early.seeds == (0,) and list(early.differences) == [-2.0]
    main["runs"][0]["metrics"]["relative_regret"] = None
    with pytest.raises(ValueError, match="has no 'relative_regret' on seed 0"):
        collect([main, peer], "a", "vw", "relative_regret")


def test_the_bare_forward_floor_runs_the_network_and_the_table_divides_by_it() -> None:
    from benchmarks.speed import floor_table
    from benchmarks.speed_worker import bare_forward

    timed = bare_forward(5, text_dim=8, numeric_dim=2, hidden=(6, 4, 3), calls=7, seed=0)
    assert timed["calls"] == 7 and 0 < timed["p50_us"] <= timed["p99_us"]
    cell = {"p50_us": 2000.0, "p99_us": 4000.0}
    engine = {"by_k": {"10": {"rank_new_context": cell},  # a result from before the floor
                       "1000": {"rank_new_context": {"p50_us": 5000.0, "p99_us": 6000.0},
                                "bare_forward": cell}}}
    rows = [[cell.strip() for cell in line.split("|")[1:-1]]
            for line in floor_table(engine).splitlines() if line.startswith("| 1000")]
    assert rows == [["1000", "5.000", "6.000", "2.000", "4.000", "2.50x", "1.50x"]]
    assert floor_table({"by_k": {"10": {"rank_new_context": cell}}}) == ""
