"""The embedding cache's background queue under a flood of new values (real model)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ef_middleware import ConfigurationError, EmbedderError, Engine, SentenceTransformerEmbedder
from ef_middleware import embedding as embedding_module
from ef_middleware.embedding import HELP_LIMIT, STORE_TTL, EmbeddingCache
from ef_middleware.store import DiskcacheStore
from tests.engine.embedders import RecordingEmbedder


def test_a_flood_of_new_values_waits_in_a_bounded_queue_and_is_learned_as_stand_ins(
        embedder: SentenceTransformerEmbedder, caplog: pytest.LogCaptureFixture) -> None:
    gated = RecordingEmbedder(embedder)
    gated.gate.clear()
    cache = EmbeddingCache(gated, None, background=True, max_queued=HELP_LIMIT + 36)
    try:
        first = cache.get_many(["campaign: spring"])  # a key's first value: encoded at once
        flood = [f"campaign: c{i}" for i in range(cache.max_queued + 20)]
        with caplog.at_level(logging.WARNING, logger="ef_middleware"):
            for text in flood:
                vector, complete = cache.lookup([text])
                assert not complete
                np.testing.assert_array_equal(vector, first)  # the key's mean stands in
        assert len(cache._queued) == cache.max_queued
        assert cache.overflowed == 20
        warnings = [r for r in caplog.records if "wait for embedding" in r.getMessage()]
        assert len(warnings) == 1  # one line, not one per text

        # A blocking caller (the learner) during the flood: stand-ins, no transformer run on
        # its thread, for queued and overflowed texts alike.
        before = len(gated.calls)
        vectors, complete = cache.lookup([flood[0], flood[-1]], block=True)
        assert not complete and len(gated.calls) == before
        np.testing.assert_array_equal(vectors, np.vstack([first, first]))

        gated.gate.set()
        assert cache.wait()
        encoded = gated.encoded()
        assert sorted(encoded) == sorted(["campaign: spring", *flood[:cache.max_queued]])
        assert all(thread == "ef-embedder" for thread, _ in gated.calls[1:])

        # An overflowed text seen again, with room now: queued and embedded.
        cache.get_many([flood[-1]])
        assert cache.wait()
        assert gated.encoded()[-1] == flood[-1]
        vector, complete = cache.lookup([flood[-1]])
        assert complete and not np.array_equal(vector, first)
    finally:
        gated.gate.set()
        cache.close()


def test_a_blocking_caller_still_encodes_a_new_value_when_the_queue_is_short(
        embedder: SentenceTransformerEmbedder) -> None:
    gated = RecordingEmbedder(embedder)
    gated.gate.clear()
    cache = EmbeddingCache(gated, None, background=True)
    try:
        cache.get_many(["campaign: spring"])
        cache.get_many(["campaign: summer"])  # queued; the background thread waits at the gate
        vector, complete = cache.lookup(["campaign: summer"], block=True)
        assert complete  # encoded on this thread, as before any flood
        assert gated.calls[-1] == (threading.current_thread().name, ["campaign: summer"])
        np.testing.assert_allclose(np.linalg.norm(vector), 1.0, rtol=1e-5)
        gated.gate.set()
        assert cache.wait()
        np.testing.assert_allclose(cache.get_many(["campaign: summer"]), vector, atol=1e-6)
    finally:
        gated.gate.set()
        cache.close()


def test_max_queued_must_be_positive(embedder: SentenceTransformerEmbedder) -> None:
    with pytest.raises(ConfigurationError):
        EmbeddingCache(embedder, None, background=True, max_queued=0)


def test_loading_the_model_writes_no_progress_bar_and_leaves_the_bars_as_they_were(
        capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # transformers' default
    fresh = SentenceTransformerEmbedder()  # loads on first use: its own copy of the model
    capfd.readouterr()
    vectors = fresh.encode(["device: mobile"])
    assert vectors.shape == (1, 384)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # a host application's bars still show


class _LoadedModel:
    """What ``SentenceTransformerEmbedder._load`` returns, without torch: unit rows."""

    def encode(self, texts: list[str], **options: Any) -> np.ndarray[Any, Any]:
        rows = np.zeros((len(texts), 384), dtype=np.float32)
        rows[:, 0] = 1.0
        return rows


@pytest.mark.parametrize("freeze", [True, False])
def test_loading_the_model_takes_what_exists_out_of_full_collections(
        monkeypatch: pytest.MonkeyPatch, freeze: bool) -> None:
    """A 15-minute soak (a plain Starlette app, no web runtime) had ranks of 309 and 467 ms:
    full collections walking the ~390,000 objects of torch and the model, one a minute,
    inside the rank that triggered them. Loading the model freezes them (``gc.freeze``);
    later encodes freeze nothing more."""
    was_frozen = gc.get_freeze_count()
    gc.unfreeze()
    # the default, or turned off
    fresh = (SentenceTransformerEmbedder() if freeze
             else SentenceTransformerEmbedder(freeze_gc=False))
    monkeypatch.setattr(fresh, "_load", _LoadedModel)
    try:
        assert gc.get_freeze_count() == 0
        fresh.encode(["device: mobile"])
        frozen = gc.get_freeze_count()
        assert (frozen > 0) is freeze
        made_since = [[i] for i in range(100)]  # tracked objects that come after the load
        fresh.encode(["device: desktop"])
        assert gc.get_freeze_count() == frozen  # the load froze, not every encode
        del made_since
    finally:
        gc.unfreeze()
        if was_frozen:  # as the session's model load left it
            gc.freeze()


def test_an_encode_writes_no_progress_bar_when_the_app_logs_at_info(
        embedder: SentenceTransformerEmbedder, capfd: pytest.CaptureFixture[str]) -> None:
    """A soak (2026-12-05) under an app that called logging.basicConfig(level=INFO):
    sentence-transformers wrote a "Batches" progress bar to stderr for every encode."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        capfd.readouterr()
        embedder.encode(["utm_campaign: a bar?"])
        assert "Batches" not in capfd.readouterr().err
    finally:
        root.setLevel(level)


def test_persisted_vectors_expire_and_the_memory_lru_is_bounded(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    # Texts are client data: one-off values must not stay in the store for good, nor fill
    # memory without bound (security audit, 2026-12-05).
    store = DiskcacheStore(tmp_path / "store")
    try:
        cache = EmbeddingCache(embedder, store, maxsize=3)
        before = time.time()
        cache.get_many([f"utm_campaign: c{i}" for i in range(5)])
        assert len(cache._memory) == 3
        value, expires = store._cache.get(cache._key("utm_campaign: c0"), expire_time=True)
        assert value is not None
        assert before + STORE_TTL - 5 <= expires <= time.time() + STORE_TTL
        forever = EmbeddingCache(embedder, store, ttl=None)
        forever.get_many(["utm_campaign: kept"])
        assert store._cache.get(forever._key("utm_campaign: kept"), expire_time=True)[1] is None
        # a vector read back from the store after its memory copy went is the text's vector,
        # and a row of its own, not a view that keeps its batch alive
        again = EmbeddingCache(embedder, store).get_many(["utm_campaign: c0"])
        np.testing.assert_allclose(again, embedder.encode(["utm_campaign: c0"]), atol=1e-6)
        assert cache._memory["utm_campaign: c4"].base is None
    finally:
        store.close()


def test_after_a_restart_a_new_value_of_a_known_key_stands_in_as_its_stored_mean(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    # A restarted process had no key means in memory: the first new value of each key was
    # encoded on the caller's thread, and the process's first encode loads the model (7-8 s
    # of a stalled server in the soak audit, 2026-12-05).
    store = DiskcacheStore(tmp_path / "store")
    try:
        before = EmbeddingCache(RecordingEmbedder(embedder), store, background=True)
        seen = before.get_many(["utm_campaign: spring"])  # the key's first: at once
        before.get_many(["utm_campaign: summer"])  # a stand-in, then the background thread
        assert before.wait()
        before.close()
        summer = before.get_many(["utm_campaign: summer"])
        mean = (seen + summer) / 2

        restarted = RecordingEmbedder(embedder)
        restarted.gate.clear()  # the background thread waits: the caller must not encode
        after = EmbeddingCache(restarted, store, background=True)
        try:
            vector, complete = after.lookup(["utm_campaign: autumn"])
            assert not complete and restarted.calls == []  # no encode on the caller's thread
            np.testing.assert_allclose(vector, mean, rtol=1e-5, atol=1e-6)
            # a key nobody stored yet is still encoded at once (nothing else can stand in)
            vector, complete = after.lookup(["lang: de"])
            assert complete and restarted.threads == ["MainThread"]
            restarted.gate.set()
            assert after.wait()
            assert restarted.encoded() == ["lang: de", "utm_campaign: autumn"]
        finally:
            restarted.gate.set()
            after.close()
    finally:
        store.close()


def test_a_new_key_waits_for_no_model_load_on_the_callers_thread(
        embedder: SentenceTransformerEmbedder) -> None:
    # After a restart whose store knew every value, the model is not loaded: a key's first
    # value would load it on the caller's thread (seconds; an async page holds the server).
    class Unloaded(RecordingEmbedder):
        loaded = False

    slow = Unloaded(embedder)
    slow.gate.clear()
    cache = EmbeddingCache(slow, None, background=True)
    try:
        vector, complete = cache.lookup(["lang: de"])
        assert not complete and slow.calls == [] and not vector.any()
        vector, complete = cache.lookup(["lang: de"], block=True)  # the learner still waits
        assert complete and slow.threads == ["MainThread"]
        slow.gate.set()
        assert cache.wait()
    finally:
        slow.gate.set()
        cache.close()
    assert not hasattr(RecordingEmbedder(embedder), "loaded")  # the default: encode at once
    assert embedder.loaded  # the real one says whether its model is in memory


class _Faulty:
    """The real model, with what a broken embedder returns: NaN for texts with "poison",
    float64 and twice the length for texts with "wide"."""

    def __init__(self, model: SentenceTransformerEmbedder) -> None:
        self.model, self.name, self.dim = model, model.name, model.dim

    def encode(self, texts: Any) -> Any:
        out = self.model.encode(texts).astype(np.float64)
        for i, text in enumerate(texts):
            if "poison" in text:
                out[i, 0] = np.nan
            elif "wide" in text:
                out[i] *= 2.0
        return out


def test_an_embedders_bad_output_never_reaches_the_store_or_the_model(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    """A faulty embedder audit (2026-12-05): one NaN vector went into memory, the store and
    its key's mean; learning made the network's weights NaN, every prediction of the loop
    (known contexts too) was NaN, and stayed so after a restart with a healthy embedder.
    float64 rows were stored at twice the size the cache reads back."""
    eng = Engine(tmp_path / "ef", embedder=_Faulty(embedder), learner=False,
                 embed_in_background=False)
    try:
        hero = eng.loop("hero", actions=["minimal", "video"])
        known = {"device": "mobile"}
        hero.rank({"device": "mobile", "campaign": "poison pill"})  # a stand-in: zeros
        cache = eng.embeddings
        # the batch failed; alone, "device: mobile" passed and the poisoned text did not: it
        # is rejected for an hour, and the embedder is not taken as failing
        assert cache.rejected == 1 and cache.failures == 0 and not cache.failing
        assert "device: mobile" in cache._memory
        assert cache.last_error is not None
        assert cache.last_error.startswith("EmbedderError") and "not finite" in cache.last_error
        with pytest.raises(EmbedderError, match="not finite"):
            cache._encode(["campaign: poison pill"])
        assert "campaign: poison pill" not in cache._memory
        assert eng.store.get(cache._key("campaign: poison pill")) is None
        assert "campaign" not in cache._centroids  # no mean made of it either
        for i in range(40):
            d = hero.rank({**known, "campaign": f"wide {i % 4}"})
            hero.reward(d.event_id, float(i % 2))
        hero.flush()
        assert hero.trainer.learned == 40
        assert all(np.isfinite(r.predicted_reward) for r in hero.rank(known).ranking)
        row = cache._memory["campaign: wide 1"]
        assert row.dtype == np.float32 and abs(float(np.linalg.norm(row)) - 1.0) < 1e-5
    finally:
        eng.close()
    again = EmbeddingCache(_Faulty(embedder), DiskcacheStore(tmp_path / "ef"))
    again.get_many(["campaign: wide 1"])
    assert again.misses == 0  # read back from the store: stored as float32


class _Failing:
    """The real model, failing (raising) while :attr:`broken`, counting its calls."""

    def __init__(self, model: SentenceTransformerEmbedder, *, delay: float = 0.0) -> None:
        self.model, self.name, self.dim = model, model.name, model.dim
        self.broken, self.calls, self.delay = False, 0, delay

    def encode(self, texts: Any) -> Any:
        self.calls += 1
        time.sleep(self.delay)
        if self.broken:
            raise RuntimeError("the model cannot load")
        return self.model.encode(texts)


def test_a_failing_embedder_backs_off_and_ranks_go_on_with_stand_ins(
        tmp_path: Path, embedder: SentenceTransformerEmbedder,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """An audit (2026-12-05): a brand-new key's failing encode raised out of every rank with
    it, run again on the request path each time; a missing model was loaded again 882 times
    a minute, with a traceback each."""
    monkeypatch.setattr(embedding_module, "BACKOFF_FIRST", 30.0)
    faulty = _Failing(embedder)
    eng = Engine(tmp_path / "ef", embedder=faulty)
    try:
        hero = eng.loop("hero", actions=["minimal", "video"])
        hero.rank({"device": "mobile"})
        faulty.broken = True
        before = faulty.calls
        with caplog.at_level(logging.WARNING, logger="ef_middleware"):
            for i in range(50):  # a new key (no mean: it was encoded at once), new values
                d = hero.rank({"device": "mobile", "utm_campaign": f"spring {i % 5}"})
                hero.reward(d.event_id, 1.0)
            hero.flush()
        assert faulty.calls - before == 1  # the first rank's, then none while backing off
        health = eng.health()
        assert health["embedder_failing"] and health["embedding_failures"] >= 1
        assert health["embedding_error"] == "RuntimeError: the model cannot load"
        assert hero.stats()["learned"] == 50 and hero.stats()["dropped"] == 0
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is None
        faulty.broken = False
        eng.embeddings._failing_until = 0.0  # the backoff is over
        hero.rank({"device": "mobile", "language": "de"})  # a new key: encoded at once
        assert "language: de" in eng.embeddings._memory
        assert not eng.health()["embedder_failing"]
    finally:
        eng.close()


class _FailingStore(DiskcacheStore):
    """A store whose reads or writes of embedding keys raise."""

    reads_fail = writes_fail = False

    def get(self, key: str) -> bytes | None:
        if self.reads_fail and key.startswith("emb"):
            raise OSError("disk read error")
        return super().get(key)

    def set_many(self, items: Any, *, expire: float | None = None) -> None:
        if self.writes_fail and any(k.startswith("emb") for k in items):
            raise OSError("disk full")
        super().set_many(items, expire=expire)


def test_a_failing_store_is_a_cache_that_misses_or_forgets(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    store = _FailingStore(tmp_path / "store")
    try:
        cache = EmbeddingCache(embedder, store)
        store.reads_fail = True
        cache.get_many(["device: tablet"])  # a read that fails is a miss: encoded
        store.reads_fail, store.writes_fail = False, True
        counting = _Failing(embedder)
        cache = EmbeddingCache(counting, store)
        cache.get_many(["device: phone"])
        cache.get_many(["device: phone"])  # kept in memory though not stored
        assert counting.calls == 1 and cache.store_failures == 1
        assert store.get(cache._key("device: phone")) is None
    finally:
        store.close()


def test_close_stops_after_the_batch_in_progress(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    """The audit: close() encoded every queued text first (13 more batches, 4.4 s with 935
    texts at 0.3 s a batch)."""
    slow = _Failing(embedder, delay=0.3)
    cache = EmbeddingCache(slow, None, background=True)
    cache.get_many(["device: a"], block=False)  # a key with no mean: encoded at once
    calls = slow.calls
    cache.get_many([f"device: {i}" for i in range(300)], block=False)  # five batches queued
    time.sleep(0.1)
    cache.close()
    assert slow.calls - calls <= 2  # the batch in progress (and one it had begun)
    assert cache._worker is not None and not cache._worker.is_alive()


def test_a_text_the_embedder_cannot_take_does_not_hold_the_others_back(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    """A review (2026-12-05): with one poisoned text among the new ones (one request in ten),
    each background batch it was in failed whole, and 391 of 400 good texts were never
    embedded. Now the texts of a failed batch are tried alone: the poisoned one is rejected
    for an hour, the others are embedded, and the cache does not back off."""
    cache = EmbeddingCache(_Faulty(embedder), None, background=True)
    try:
        cache.get_many(["campaign: first"])  # the key has a mean: new values are queued
        good = [f"campaign: spring {i}" for i in range(90)]
        for i in range(0, 90, 9):
            cache.get_many([*good[i:i + 9], "campaign: poison"], block=False)
        assert cache.wait()
        assert all(text in cache._memory for text in good)
        assert "campaign: poison" not in cache._memory
        assert cache.rejected == 1 and cache.failures == 0 and not cache.failing
        cache.get_many(["campaign: poison"], block=False)  # rejected: not queued again
        assert cache.queued == 0
    finally:
        cache.close()


def test_engine_close_waits_for_no_hung_encode(
        tmp_path: Path, embedder: SentenceTransformerEmbedder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The review: a background encode hung on the model held ``engine.close()`` (14.8 s,
    and for good on a real hang): its last learning pass re-encoded on the closing thread."""
    monkeypatch.setattr(embedding_module, "CLOSE_WAIT", 0.5)
    release = threading.Event()

    class Hanging:
        name, dim = embedder.name, embedder.dim
        lock = threading.Lock()

        def encode(self, texts: Any) -> Any:
            with self.lock:  # the model is not re-entrant: a second encode waits
                if threading.current_thread().name == "ef-embedder":
                    release.wait(60)
                return embedder.encode(texts)

    eng = Engine(tmp_path / "ef", embedder=Hanging(), learner=False)
    try:
        hero = eng.loop("hero", actions=["minimal", "video"])
        hero.rank({"campaign": "one"})
        d = hero.rank({"campaign": "two"})  # a stand-in; the background encode hangs
        hero.reward(d.event_id, 1.0)
        closing = threading.Thread(target=eng.close)
        closing.start()
        closing.join(10)
        assert not closing.is_alive()  # it did not wait for the hung encode
        assert hero.closed and hero.stats()["learned"] == 1
    finally:
        release.set()
        worker = eng.embeddings._worker
        if worker is not None:
            worker.join(30)  # not torch still running in a thread when the process exits
