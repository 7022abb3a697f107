"""``scripts/bench stalls``: its statistics on made-up timings, its load against the lab
driver's, and a short run end to end (a process of its own, as the benchmark runs it)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.paths import REPO_ROOT
from benchmarks.stalls import command_line, summarise
from benchmarks.stalls_worker import COUNTRIES, DEVICES, Catalogue, Traffic


def _raw(ranks: list[tuple[float, float]], gc: list[tuple[int, float, float]]) -> dict[str, Any]:
    return {"ranks": ranks, "gc": gc, "elapsed": 10.0, "cpu_stat": [None, None],
            "learned_before": 5, "learned": 25, "model_version": 3, "decisions": 100,
            "ef_middleware": "ef_middleware/__init__.py", "warm_up": {"seconds": 1.0},
            "rewards_posted": 4, "reward_errors": 0, "encoded_during_run": 0,
            "gc_threshold": [700, 10, 10], "gc_frozen": 0, "model_version_before": 1,
            "health": {}, "close_seconds": 0.1, "stalls": []}


def test_summarise_leaves_out_the_skipped_start() -> None:
    rate = 10.0
    ranks = [(i / rate, 500.0 if i < 20 else 1.0 + (i % 10)) for i in range(100)]
    ranks[50] = (5.0, 40.0)
    ranks[60] = (6.0, 150.0)
    gc = [(2, 1.0, 300.0), (0, 3.0, 0.5), (2, 4.0, 80.0), (1, 5.0, 2.0)]
    s = summarise(_raw(ranks, gc), rate, skip=2.0)
    assert s["ranks"] == 80  # the 20 slow ranks of the first 2 s are left out
    assert s["max_ms"] == 150.0 and s["over_30_ms"] == 2 and s["over_100_ms"] == 1
    assert s["p50_ms"] <= s["p99_ms"] <= s["p99_9_ms"] <= s["max_ms"]
    assert s["rate"] == pytest.approx(80 / 8.0)
    assert s["gc_counts"] == [1, 1, 1] and s["gc_longest_ms"] == [0.5, 2.0, 80.0]
    assert s["learned"] == 20 and s["learned_total"] == 25
    assert s["steal"] is None


def test_traffic_draws_as_the_lab_driver() -> None:
    """driver2.py's calls, in its order of draws: the earlier figures' load."""
    rng = random.Random(27)
    ids = [f"sku-{i:05d}" for i in range(5000)]
    prices = [f"${4.99 + 0.25 * i:.2f}" for i in range(2000)]
    traffic = Traffic(Catalogue())
    for n in range(1, 51):
        context = {"device": rng.choice(list(DEVICES)), "country": rng.choice(list(COUNTRIES)),
                   "hour": rng.randrange(24)}
        actions = [{"id": pid, "features": {"price": rng.choice(prices)}}
                   for pid in rng.sample(ids, 10)]
        assert traffic.call() == (context, actions)
        if n % 5 == 0:
            assert traffic.reward_delay() == rng.uniform(0, 2)


def test_warm_up_calls_cover_every_value() -> None:
    catalogue = Catalogue(skus=40, prices=25)
    calls = list(catalogue.every_value())
    assert {a["id"] for _, actions in calls for a in actions} == set(catalogue.ids)
    assert ({a["features"]["price"] for _, actions in calls for a in actions}
            == set(catalogue.prices))
    assert {c["device"] for c, _ in calls} == set(DEVICES)
    texts = catalogue.texts()
    assert "variant: sku-00039" in texts and "price: $4.99" in texts
    assert len(texts) == len(set(texts))


def test_command_line_names_no_machine_path(tmp_path: Path) -> None:
    line = command_line(["--quick", "--json", str(tmp_path / "x.json"),
                         f"--results-dir={REPO_ROOT / 'benchmarks' / 'results'}"])
    assert line == ("scripts/bench stalls --quick --json .../x.json "
                    "--results-dir=benchmarks/results")


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    """A short run (about 40 s here): a warm store, then one measurement in its own process."""
    out = tmp_path / "stalls.json"
    rate, duration, skip = 50.0, 4.0, 1.0
    subprocess.run([sys.executable, "-m", "benchmarks", "stalls", "--quick", "--rate",
                    str(rate), "--duration", str(duration), "--skip", str(skip),
                    "--no-progress", "--json", str(out)], cwd=REPO_ROOT, check=True,
                   timeout=300, capture_output=True)
    text = out.read_text()
    assert "/tmp" not in text and "/work" not in text
    result = json.loads(text)
    assert result["command"].startswith("scripts/bench stalls --quick")
    assert result["load"]["sku_ids"] == 500 and result["warm_store"]["texts"] > 500
    [run] = result["runs"]
    assert run["ef_middleware"] == "ef_middleware/__init__.py"
    assert run["ranks"] == pytest.approx(rate * (duration - skip), rel=0.05)
    assert run["rate"] == pytest.approx(rate, rel=0.1)
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["p99_9_ms"] <= run["max_ms"]
    assert run["learned"] > 0 and run["model_version"] >= run["model_version_before"]
    assert run["encoded_during_run"] == 0  # the warm-up embedded every text
    assert run["reward_errors"] == 0 and run["rewards_posted"] > 0
    assert len(run["gc_counts"]) == 3
    assert result["medians"]["this checkout"]["ranks"] == run["ranks"]
