"""Per-action counts for exploration, counted forever or discounted with a half-life."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ef_middleware import Engine, SentenceTransformerEmbedder
from ef_middleware import counts as counts_module
from ef_middleware.counts import ActionCounts
from ef_middleware.errors import ConfigurationError

HERO = [{"id": "minimal", "features": {"layout": "minimal"}},
        {"id": "video", "features": {"layout": "video"}}]


def test_without_a_half_life_counts_are_plain_sums() -> None:
    counts = ActionCounts()
    for i in range(1000):
        counts.add("a" if i % 4 else "b", 1.0 if i % 10 == 0 else 0.0)
    assert counts.get("a") == (750.0, 50.0)
    assert counts.get("b") == (250.0, 50.0)  # every multiple of 20
    assert counts.get("never") == (0.0, 0.0)


def test_ids_past_the_limit_drop_those_learned_longest_ago(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-call lists bring new ids for as long as a site runs (its articles): each one
    counted for good grew memory and every snapshot."""
    monkeypatch.setattr(counts_module, "LIMIT", 20)
    counts = ActionCounts()
    counts.add("kept", 1.0)
    for i in range(200):
        counts.add(f"article {i}", 0.0)
        if i % 10 == 0:
            counts.add("kept", 0.0)  # learned again now and then: never the oldest
    assert len(counts.entries) <= 20
    assert counts.get("kept") == (21.0, 1.0)
    assert counts.get("article 199") == (1.0, 0.0)
    assert counts.get("article 0") == (0.0, 0.0)  # dropped: it starts again from zero


def test_the_loops_own_actions_keep_their_counts_past_the_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A review (2026-12-05): a variant of the loop's own, rarely chosen, lost its count to
    the churn of per-call ids and was explored again as new."""
    monkeypatch.setattr(counts_module, "LIMIT", 20)
    counts = ActionCounts()
    counts.kept = frozenset({"rare variant"})
    for _ in range(5):
        counts.add("rare variant", 1.0)
    for i in range(500):
        counts.add(f"article {i}", 0.0)
    assert counts.get("rare variant") == (5.0, 5.0)
    assert len(counts.entries) <= 20


def test_a_count_halves_after_half_life_samples_of_other_actions() -> None:
    counts = ActionCounts(half_life=100)
    for _ in range(3):
        counts.add("a", 1.0)
    for _ in range(100):
        counts.add("b", 0.0)
    keep = 0.5 ** (1 / 100)
    a, a_rewards = counts.get("a")
    assert a == pytest.approx((1 + keep + keep**2) / 2, rel=1e-9) and a_rewards == a
    # b: a geometric sum, sum of keep**j for j < 100 = (1 - 0.5) / (1 - keep)
    assert counts.get("b")[0] == pytest.approx(0.5 / (1 - keep), rel=1e-9)


def test_discounted_counts_level_off_near_half_life_over_ln_2() -> None:
    counts = ActionCounts(half_life=500)
    for i in range(20_000):
        counts.add("ab"[i % 2], 0.0)
    total = counts.get("a")[0] + counts.get("b")[0]
    assert total == pytest.approx(500 / math.log(2), rel=0.01)


def test_state_round_trip_and_an_older_snapshot() -> None:
    counts = ActionCounts(half_life=50)
    for i in range(120):
        counts.add("ab"[i % 3 == 0], float(i % 2))
    again = ActionCounts(half_life=50)
    again.restore(counts.state())
    assert again.get("a") == counts.get("a") and again.get("b") == counts.get("b")
    again.add("a", 1.0)
    counts.add("a", 1.0)
    assert again.get("a") == counts.get("a")  # the clock came back too
    old = ActionCounts(half_life=50)
    old.restore({"a": [40.0, 4.0], "b": [80.0, 2.0]})  # before counts were discounted
    assert old.get("a") == (40.0, 4.0) and old.get("b") == (80.0, 2.0)


def test_the_setting_is_checked_and_served(tmp_path: Path,
                                           embedder: SentenceTransformerEmbedder) -> None:
    engine = Engine(tmp_path / "ef", embedder=embedder, seed=3)
    try:
        for bad in (0, -5, -math.inf, math.nan):
            with pytest.raises(ConfigurationError, match="count_half_life"):
                engine.loop(f"bad-{bad}", actions=HERO, count_half_life=bad)
        loop = engine.loop("hero", actions=HERO, count_half_life=20, reward_wait=1)
        for _ in range(60):
            loop.reward(loop.rank({"device": "mobile"}, exclude=["video"]).event_id, 1.0)
        loop.flush()
        loop.reward(loop.rank({"device": "mobile"}, exclude=["minimal"]).event_id, 0.0)
        loop.flush()
        state = loop._serving
        minimal, video = (state.counts[state.index[a]] for a in ("minimal", "video"))
        keep = 0.5 ** (1 / 20)
        assert minimal == pytest.approx((1 - keep**60) / (1 - keep) * keep, rel=1e-5)
        assert video == 1.0
        assert loop.trainer.counts.kept == {"minimal", "video"}  # never dropped for new ids
    finally:
        engine.close()
    again = Engine(tmp_path / "ef", embedder=embedder, seed=3)
    try:
        loop = again.loop("hero", actions=HERO, count_half_life=20, reward_wait=1)
        assert loop.restored
        state = loop._serving
        assert state.counts[state.index["minimal"]] == pytest.approx(minimal, rel=1e-5)
    finally:
        again.close()


def test_by_default_thompson_counts_fade_with_a_half_life_of_5000_samples(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    """The default that came with Thompson's rate-scaled noise (docs/design.md, "Choice of the
    default strategy"): 200 samples of one action count as sum(keep ** age); ``bernoulli-ts``,
    ``math.inf`` and thompson's old noise (``rate_scaled=False``) count them forever."""
    engine = Engine(tmp_path / "ef", embedder=embedder, seed=3)
    try:
        faded = engine.loop("hero", actions=HERO, reward_wait=1)
        forever = engine.loop("kept", actions=HERO, reward_wait=1, count_half_life=math.inf)
        bandit = engine.loop("bandit", actions=HERO, reward_wait=1, strategy="bernoulli-ts")
        flat = engine.loop("flat", actions=HERO, strategy_options={"rate_scaled": np.False_})
        assert (faded.settings.count_half_life, bandit.settings.count_half_life,
                flat.settings.count_half_life) == (5000, math.inf, math.inf)
        for loop in (faded, forever, bandit):
            for _ in range(200):
                loop.reward(loop.rank({"device": "mobile"}, exclude=["video"]).event_id, 1.0)
            loop.flush()
        keep = 0.5 ** (1 / 5000)
        assert faded.trainer.counts.get("minimal")[0] == pytest.approx(
            (1 - keep**200) / (1 - keep), rel=1e-9)  # 197.2
        assert forever.trainer.counts.get("minimal") == (200.0, 200.0)
        assert bandit.trainer.counts.get("minimal") == (200.0, 200.0)
    finally:
        engine.close()
