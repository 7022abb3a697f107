"""Feature encoding: cyclic numbers, text pooling and the running standardisation, checked
against direct numpy computations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ef_middleware import Engine, SentenceTransformerEmbedder
from ef_middleware.features import NumericSpace, RunningScaler
from tests.engine.embedders import RecordingEmbedder


@pytest.mark.parametrize(("name", "value", "sin", "cos"), [
    ("hour", 0, 0.0, 1.0), ("hour", 6, 1.0, 0.0), ("hour", 12, 0.0, -1.0),
    ("hour", 18, -1.0, 0.0), ("hour", 30, 1.0, 0.0),  # 30 wraps to 6
    ("weekday", 0, 0.0, 1.0), ("weekday", 3.5, 0.0, -1.0),
    ("weekday", 1.75, 1.0, 0.0), ("weekday", 5.25, -1.0, 0.0),
])
def test_hour_and_weekday_go_once_around_the_circle(name: str, value: float, sin: float,
                                                    cos: float) -> None:
    """An hour (period 24) or a weekday (period 7) becomes the sine and cosine of a full
    turn per period: 23 h sits next to 0 h, and 6 h is a quarter turn."""
    space = NumericSpace(4)
    values, mask = space.raw({name: value})
    i, j = space.slots[f"{name}~sin"], space.slots[f"{name}~cos"]
    assert (values[i], values[j]) == (pytest.approx(sin, abs=1e-6), pytest.approx(cos, abs=1e-6))
    assert mask.tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.fixture
def engine(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Any:
    eng = Engine(tmp_path / "ef", embedder=embedder, seed=1, embed_in_background=False)
    yield eng
    eng.close()


def test_a_contexts_texts_are_mean_pooled(engine: Engine,
                                          embedder: SentenceTransformerEmbedder) -> None:
    """The context vector is the mean of its texts' vectors, not their sum: contexts with
    more features are not longer vectors."""
    hero = engine.loop("hero", actions=[{"id": "a"}, {"id": "b"}])
    texts = ["device: mobile", "referrer: google", "browser: firefox"]
    pooled, complete = hero.encoder.pool(texts, block=True)
    assert complete
    expected = np.asarray(embedder.encode(texts), dtype=np.float64).mean(axis=0)
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)


BATCHES = [np.random.default_rng(seed).normal(loc=seed, scale=1 + seed, size=(n, 3))
           for seed, n in ((0, 5), (1, 17), (2, 1), (3, 40))]


def test_running_statistics_of_merged_batches_match_numpy() -> None:
    """Chan's merge of batch after batch gives the mean and unbiased variance of all the
    rows at once, whatever the batch sizes."""
    scaler = RunningScaler(3)
    for batch in BATCHES:
        scaler.update(batch)
    rows = np.vstack(BATCHES)
    np.testing.assert_allclose(scaler.mean, rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler.m2 / (scaler.count - 1), rows.var(axis=0, ddof=1),
                               rtol=1e-12)
    mean, inv_std = scaler.scale
    np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(1.0 / inv_std, rows.std(axis=0, ddof=1), rtol=1e-6)


def test_standardisation_is_clipped_masked_and_floored() -> None:
    """Values come out as z-scores clipped to +-5, zero where the mask is 0, and a
    dimension that never moved is divided by ``min_std``, not by almost nothing."""
    scaler = RunningScaler(3, min_std=0.01)
    rows = np.vstack([np.array([[0.0, 1.0, 7.0], [2.0, 3.0, 7.0]]),
                      np.array([[4.0, 5.0, 7.0]])])
    scaler.update(rows)
    # column 0: mean 2, sd 2; column 1: mean 3, sd 2; column 2: constant 7, sd floored
    out = scaler.standardise(np.array([[3.0, 100.0, 7.005], [-40.0, 2.0, 7.0]]))
    np.testing.assert_allclose(out, [[0.5, 5.0, 0.5], [-5.0, -0.5, 0.0]], rtol=1e-4,
                               atol=1e-5)
    masked = scaler.standardise(np.array([[3.0, 5.0, 7.0]]), np.array([[1.0, 0.0, 1.0]]))
    np.testing.assert_allclose(masked, [[0.5, 0.0, 0.0]], atol=1e-6)
    assert math.isfinite(float(scaler.scale[1][2])) and scaler.scale[1][2] == pytest.approx(100)


def test_a_loops_new_actions_are_embedded_in_one_call_with_the_same_vectors(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    """Creating a loop (and a rank with per-call actions) embeds every new action's texts in
    one encode, in the embedder's batches, not one encode per action; each action's row is
    still the mean of its own texts' vectors."""
    recording = RecordingEmbedder(embedder)
    eng = Engine(tmp_path / "ef", embedder=recording, seed=1, embed_in_background=False)
    try:
        catalogue = [{"id": f"p{i}", "features": {"title": f"Garden chair model {i}",
                                                  "colour": ("green", "grey")[i % 2]}}
                     for i in range(12)]
        shop = eng.loop("shop", actions=catalogue)
        texts = {t for action in shop.actions for t in action.texts()}
        assert len(recording.calls) == 1
        assert sorted(recording.calls[0][1]) == sorted(texts)  # 26 texts, each once

        fresh = [{"id": f"n{i}", "features": {"title": f"Parasol {i}"}} for i in range(5)]
        shop.rank({"device": "mobile"}, actions=fresh)
        per_call = [call for call in recording.calls[1:] if "variant: n0" in call[1]]
        assert len(per_call) == 1
        assert {f"variant: n{i}" for i in range(5)} <= set(per_call[0][1])

        vectors, complete = shop.encoder.actions([shop.actions[3]], block=True)
        assert complete == [True]
        expected = np.asarray(embedder.encode(shop.actions[3].texts())).mean(axis=0)
        np.testing.assert_allclose(vectors[0], expected, rtol=1e-5, atol=1e-6)
    finally:
        eng.close()


def test_a_ranks_new_per_call_actions_read_the_store_once_each(
        tmp_path: Path, embedder: SentenceTransformerEmbedder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With background embedding (the default) the request path encodes nothing: looking
    the new actions' texts up together first, then each action again, read the store twice
    for every text (a review of 2026-12-05). It looks them up together only when it encodes."""
    recording = RecordingEmbedder(embedder)
    recording.gate.clear()  # the background thread waits: nothing is embedded meanwhile
    eng = Engine(tmp_path / "ef", embedder=recording, learner=False)
    try:
        shop = eng.loop("shop", actions=[{"id": "a", "features": {"colour": "red"}},
                                         {"id": "b", "features": {"colour": "blue"}}])
        shop.rank({"device": "mobile"})
        reads: list[str] = []
        real_get = eng.store.get

        def get(key: str) -> bytes | None:
            reads.append(key)
            return real_get(key)

        monkeypatch.setattr(eng.store, "get", get)
        items = [{"id": f"item{i}", "features": {"colour": f"shade {i}"}} for i in range(20)]
        shop.rank({"device": "mobile"}, actions=items)
        vectors = [key for key in reads if key.startswith("emb:")]
        assert vectors and len(vectors) == len(set(vectors))
    finally:
        recording.gate.set()
        eng.close()
