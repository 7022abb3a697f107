"""The gauge of the network on fresh samples, and the replay ratio that follows it."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ef_middleware import ConfigurationError, Engine, SentenceTransformerEmbedder
from ef_middleware.gain import HORIZON, MIN_WEIGHT, FreshGain
from ef_middleware.loop import Loop
from ef_middleware.settings import LoopSettings

HERO = [
    {"id": "minimal", "features": {"layout": "minimal", "cta": "Start free trial"}},
    {"id": "video", "features": {"layout": "video", "cta": "Watch demo"}},
]


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def test_the_gain_compares_the_network_with_the_mean_reward_on_the_same_samples() -> None:
    gauge = FreshGain()
    y = np.array([1.0, 0.0, 0.0, 0.0] * 50, dtype=np.float32)  # 200 samples, a quarter 1
    z = np.where(y == 1, logit(0.8), logit(0.1)).astype(np.float32)
    gauge.add(z, y)
    # the constant is the mean reward before them: (0 + 0.5) / (0 + 1) = 0.5, log loss ln 2
    model = -(0.25 * math.log(0.8) + 0.75 * math.log(0.9))
    assert gauge.gain == pytest.approx(1.0 - model / math.log(2.0), rel=1e-5)
    assert gauge.weight == pytest.approx(1.0 - (1.0 - 1.0 / HORIZON) ** 200)


def test_the_gain_waits_for_enough_samples_and_weighs_recent_ones_more() -> None:
    gauge = FreshGain()
    first = int(math.log(1.0 - MIN_WEIGHT) / math.log(1.0 - 1.0 / HORIZON))  # just short
    y = np.tile(np.array([1.0, 0.0], dtype=np.float32), first)[:first]
    gauge.add(np.where(y == 1, 3.0, -3.0).astype(np.float32), y)
    assert gauge.gain is None
    gauge.add(np.array([3.0], np.float32), np.array([1.0], np.float32))
    assert gauge.gain is not None and gauge.gain > 0.8  # a good predictor: far above 0
    before = gauge.gain
    for _ in range(20):  # the network now predicts the opposite: the gain falls below 0
        gauge.add(np.where(y == 1, -3.0, 3.0).astype(np.float32), y)
    assert gauge.gain < 0 < before


def test_a_network_that_predicts_the_recent_mean_gains_nothing() -> None:
    """The constant is the mean of the rewards before a batch, each weighted by ``keep`` to
    the power of its age in samples, with half a reward of prior (kept here by hand)."""
    gauge = FreshGain()
    rng = np.random.default_rng(0)
    keep, total, weight = 1.0 - 1.0 / HORIZON, 0.0, 0.0
    for rate in (0.1, 0.3, 0.05):
        for _ in range(40):
            y = (rng.random(64) < rate).astype(np.float32)
            mean = (total + 0.5) / (weight + 1.0)
            gauge.add(np.full(64, logit(mean), np.float32), y)
            for reward in y:  # oldest first
                total, weight = keep * total + float(reward), keep * weight + 1.0
    assert gauge.gain == pytest.approx(0.0, abs=1e-6)


def test_the_state_round_trips_and_a_damaged_one_changes_nothing() -> None:
    gauge = FreshGain()
    gauge.add(np.zeros(300, np.float32), np.ones(300, np.float32))
    copy = FreshGain()
    copy.restore(gauge.state())
    assert copy.state() == gauge.state() and copy.gain == gauge.gain
    state: dict[str, Any] = gauge.state()
    for damage in ({"weight": 1.5}, {"model_loss": float("nan")}, {"constant_loss": -1.0},
                   {"reward_sum": -2.0}, {"reward_sum": 1e9}, {"weight": 1e9},
                   {"weight": "much"}):
        with pytest.raises(ValueError, match="damaged"):
            copy.restore({**state, **damage})
        assert copy.state() == state
    with pytest.raises(ValueError, match="damaged"):
        copy.restore({k: v for k, v in state.items() if k != "reward_sum"})
    assert copy.state() == state


def test_a_base_rate_that_drifts_is_not_taken_for_signal() -> None:
    """A network that knows only the recent base rate predicts no better than the constant,
    whose mean forgets at the same pace (with an all-time mean this stream's gain was 0.05
    after the rate halved, and pure noise was boosted: a review of 2026-12-06)."""
    gauge = FreshGain()
    rng = np.random.default_rng(0)
    for rate in (0.10, 0.05):  # 4,000 samples at each rate, the network knowing the rate
        for _ in range(250):
            y = (rng.random(16) < rate).astype(np.float32)
            gauge.add(np.full(16, logit(rate), np.float32), y)
    assert gauge.gain is not None and abs(gauge.gain) < 0.01


def test_the_boost_rises_log_linearly_from_the_start_gain_to_the_full_one() -> None:
    s = LoopSettings(replay_ratio=4, replay_boost=4, replay_boost_start=0.02,
                     replay_boost_full=0.10, replay_backlog=100)
    assert s.boost(None) == s.boost(-0.5) == s.boost(0.02) == 1.0
    assert s.boost(0.06) == pytest.approx(2.0)  # half way: the square root of 4
    assert s.boost(0.10) == s.boost(0.9) == 4.0
    assert s.replay_ratio_at(0, 0.5) == 16.0 and s.replay_ratio_at(0, 0.0) == 4.0
    # a learner that is behind drops the boost, then sheds replay down to one visit a sample
    assert s.replay_ratio_at(100, 0.5) == 16.0 and s.replay_ratio_at(101, 0.5) < 4.0
    assert s.replay_ratio_at(200, 0.5) == 2.0 and s.replay_ratio_at(10**6, 0.5) == 1.0
    assert LoopSettings(replay_boost=1).replay_ratio_at(0, 0.9) == 4.0  # off


@pytest.mark.parametrize("bad", [{"replay_boost": 0.5}, {"replay_boost": math.inf},
                                 {"replay_boost_start": 0.2, "replay_boost_full": 0.1},
                                 {"replay_boost_start": -0.1}, {"replay_boost_full": 1.5}])
def test_bad_boost_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="replay_boost"):
        LoopSettings(**bad)


Rewards = Callable[[str, str, np.random.Generator], float]


@contextlib.contextmanager
def opened(folder: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Engine]:
    """An engine on ``folder`` that learns inside ``flush()``, closed (and saved) after."""
    eng = Engine(folder, embedder=embedder, seed=1, learner=False)
    try:
        yield eng
    finally:
        eng.close()


def clear(device: str, action: str, rng: np.random.Generator) -> float:
    """A reward the context decides: mobile visitors take ``minimal``, the others ``video``."""
    return float((device == "mobile") == (action == "minimal"))


def _learn(hero: Loop, rewards: Rewards, n: int) -> None:
    """``n`` visitors, half on mobile, each rewarded by ``rewards(device, action, rng)``."""
    rng = np.random.default_rng(3)
    for i in range(n):
        device = "mobile" if rng.random() < 0.5 else "desktop"
        d = hero.rank({"device": device})
        hero.reward(d.event_id, rewards(device, d.action_id, rng))
        if i % 50 == 49:
            hero.flush()


def test_rewards_the_context_explains_are_replayed_more_and_noise_is_not(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    with opened(tmp_path / "ef", embedder) as eng:
        explained, noisy = eng.loop("clear", actions=HERO), eng.loop("noisy", actions=HERO)
        _learn(explained, clear, 1500)
        _learn(noisy, lambda device, action, rng: float(rng.random() < 0.1), 1500)
        gain, ratio = explained.stats()["fresh_gain"], explained.stats()["replay_ratio"]
        assert gain > 0.10 and ratio == 16.0  # the full boost: 4 times the ratio of 4
        noise, ratio = noisy.stats()["fresh_gain"], noisy.stats()["replay_ratio"]
        assert noise < 0.02 and ratio == 4.0
    with opened(tmp_path / "ef", embedder) as eng:  # saved with the model: a restarted
        assert eng.loop("clear", actions=HERO).stats()["fresh_gain"] == gain  # loop goes on


def test_the_gauge_gets_each_fresh_sample_once_with_its_logit_from_before_the_step(
        tmp_path: Path, embedder: SentenceTransformerEmbedder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with opened(tmp_path / "ef", embedder) as eng:
        hero = eng.loop("probe", actions=HERO)
        trainer = hero.trainer
        before: list[np.ndarray] = []
        fed: list[np.ndarray] = []
        train, add = trainer.net.train_batch, trainer.fresh_gain.add

        def recording_train(x: Any, y: np.ndarray) -> float:
            before.append(trainer.net.forward(x)[0].copy())  # the weights before this step
            return train(x, y)

        def recording_add(logits: np.ndarray, rewards: np.ndarray) -> None:
            fed.append(np.array(logits, copy=True))
            add(logits, rewards)

        monkeypatch.setattr(trainer.net, "train_batch", recording_train)
        monkeypatch.setattr(trainer.fresh_gain, "add", recording_add)
        for i in range(300):
            d = hero.rank({"device": "mobile" if i % 3 else "desktop"})
            hero.reward(d.event_id, float(i % 2))
        hero.flush()
        assert sum(z.size for z in fed) == trainer.learned == 300  # each sample once
        assert len(fed) == len(before) == trainer.net.step
        for logits, full in zip(fed, before, strict=True):  # the fresh rows lead the batch
            np.testing.assert_allclose(logits, full[:logits.size], rtol=1e-5, atol=1e-6)
        assert sum(z.size for z in before) == 64 * trainer.net.step > 300  # replayed rows too


def test_a_replay_ratio_below_one_keeps_no_more_new_samples_than_a_step_takes(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    """At a ratio of 1/4 a step of 64 is bought by 256 new samples: the other 192 are left to
    the replay. The list of samples waiting for their first step grew by them without bound
    (a leak), and with a buffer of 200 it named slots written over since (a review of
    2026-12-06). The newest wait for the next step."""
    with opened(tmp_path / "ef", embedder) as eng:
        hero = eng.loop("slow", actions=HERO, replay_ratio=0.25, replay_size=200)
        _learn(hero, clear, 1000)
        trainer = hero.trainer
        assert trainer.learned == 1000 and trainer.net.step == 1000 // 256
        waiting = trainer._fresh
        assert 0 < len(waiting) <= 64  # the newest samples wait: the next step takes them
        assert sorted(waiting) == sorted(trainer.replay.recent(len(waiting)).tolist())


def test_a_damaged_gauge_in_a_snapshot_starts_afresh_and_keeps_the_model(
        tmp_path: Path, embedder: SentenceTransformerEmbedder,
        caplog: pytest.LogCaptureFixture) -> None:
    with opened(tmp_path / "ef", embedder) as eng:
        hero = eng.loop("hero", actions=HERO)
        _learn(hero, clear, 600)
        saved = hero.trainer.fresh_gain.state()
        hero.trainer.fresh_gain.weight = 2.0  # saved with the model at close
    with opened(tmp_path / "ef", embedder) as eng, caplog.at_level("WARNING", "ef_middleware"):
        hero = eng.loop("hero", actions=HERO)
        assert hero.trainer.learned == 600 and hero.trainer.net.step > 0  # the model is back
        assert hero.trainer.fresh_gain.state() != saved and hero.stats()["fresh_gain"] is None
        assert any("gauge of fresh samples is damaged" in r.getMessage()
                   for r in caplog.records)


def test_a_frozen_loop_reports_its_ratio_unboosted(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    with opened(tmp_path / "ef", embedder) as eng:
        hero = eng.loop("hero", actions=HERO)
        _learn(hero, clear, 1500)
        assert hero.stats()["replay_ratio"] == 16.0
    with opened(tmp_path / "ef", embedder) as eng:  # frozen: nothing is trained, so
        hero = eng.loop("hero", actions=HERO, learning=False)  # nothing is replayed more
        assert hero.stats()["fresh_gain"] > 0.10
        hero.reward(hero.rank({"device": "mobile"}).event_id, 1.0)
        hero.flush()
        assert hero.stats()["replay_ratio"] == 4.0
