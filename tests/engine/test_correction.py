"""The fast correction: per (context text, action) logit offsets learned online."""

from __future__ import annotations

import gc
import logging
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from ef_middleware import Engine, SentenceTransformerEmbedder
from ef_middleware import correction as correction_module
from ef_middleware.correction import ACTION_CELL, Correction
from ef_middleware.model import RewardNet
from ef_middleware.store import DiskcacheStore


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_offsets_learn_what_the_network_misses_and_only_there() -> None:
    rng = np.random.default_rng(0)
    fix = Correction(rate=0.3)
    texts = ("utm_campaign: summer_launch", "device: mobile")
    for _ in range(3000):  # the network says 10%, the campaign's visitors click 30%
        fix.update(texts, "video", logit(0.1), float(rng.random() < 0.3))
    video, minimal = fix.offsets(texts, ["video", "minimal"])
    assert video == pytest.approx(logit(0.3) - logit(0.1), abs=0.25)
    assert minimal == 0.0  # no data on this action: no correction
    assert fix.offsets(("device: desktop",), ["video"])[0] != 0.0  # the action's own cell


def test_a_calibrated_network_keeps_the_offsets_near_zero() -> None:
    rng = np.random.default_rng(1)
    fix = Correction(rate=0.3)
    for _ in range(5000):
        p = rng.choice([0.05, 0.2])
        texts = ("referrer: email",) if p > 0.1 else ("referrer: search",)
        fix.update(texts, "minimal", logit(p), float(rng.random() < p))
    offsets = [fix.offsets((t,), ["minimal"])[0] for t in ("referrer: email", "referrer: search")]
    assert max(abs(o) for o in offsets) < 0.25


def test_a_new_cell_moves_faster_than_an_old_one() -> None:
    fix = Correction(rate=0.3)
    for _ in range(500):  # an old cell, calibrated
        fix.update(("referrer: email",), "a", logit(0.5), 1.0)
        fix.update(("referrer: email",), "a", logit(0.5), 0.0)
    old = fix.cells["referrer: email"]["a"][0]
    fix.update(("referrer: email",), "a", logit(0.5), 1.0)
    fix.update(("utm_campaign: new",), "a", logit(0.5), 1.0)
    moved_old = fix.cells["referrer: email"]["a"][0] - old
    moved_new = fix.cells["utm_campaign: new"]["a"][0]
    # AdaGrad, the step shared by two cells (the action's and the text's): 0.3 / 2 * 0.5 /
    # sqrt(1 + 0.25) for the new cell, / sqrt(1 + ~250) for the old one
    assert moved_new == pytest.approx(0.15 * 0.5 / math.sqrt(1.25), rel=0.05)
    assert moved_new > 5 * moved_old > 0


def test_the_correction_is_saved_and_restored(tmp_path: Path,
                                              embedder: SentenceTransformerEmbedder) -> None:
    ctx = {"device": "tablet", "utm_campaign": "summer"}
    first = Engine(tmp_path / "ef", embedder=embedder, seed=5)
    hero = first.loop("hero", actions=["minimal", "video"], correction_rate=0.5)
    for _ in range(30):
        d = hero.rank(ctx)
        hero.reward(d.event_id, 1.0 if d.action_id == "video" else 0.0)
    hero.flush()
    cells = dict(hero.trainer.correction.cells)  # type: ignore[union-attr]
    assert cells and any(abs(c[0]) > 0.1 for per in cells.values() for c in per.values())
    before = {r.action_id: r.predicted_reward for r in hero.rank(ctx).ranking}
    first.close()
    second = Engine(tmp_path / "ef", embedder=embedder, seed=99)
    again = second.loop("hero", actions=["minimal", "video"], correction_rate=0.5)
    assert again.restored
    assert again.trainer.correction.cells == cells  # type: ignore[union-attr]
    after = {r.action_id: r.predicted_reward for r in again.rank(ctx).ranking}
    assert after == pytest.approx(before, rel=1e-6)
    second.close()


def _rewrite_latest(folder: Path, loop: str, rewrite: Any) -> None:
    """Replace ``loop``'s latest snapshot in the store at ``folder`` by ``rewrite(blob)``."""
    store = DiskcacheStore(folder)
    try:
        key = f"model:{loop}:{store.get(f'model:{loop}:latest').decode()}"  # type: ignore[union-attr]
        store.set(key, rewrite(store.get(key)))
    finally:
        store.close()


def test_the_offsets_are_saved_as_raw_numbers_and_older_snapshots_still_load(
        tmp_path: Path, embedder: SentenceTransformerEmbedder,
        caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot holds the offsets as float64 bytes between its meta and its network (no JSON
    list for the learner to write while requests wait); one written before, with the offsets
    in its JSON, restores the same offsets; damaged offsets are left out with a warning and the
    network kept; a snapshot cut short is ignored."""
    folder = tmp_path / "ef"
    first = Engine(folder, embedder=embedder, seed=5)
    hero = first.loop("hero", actions=["minimal", "video"], correction_rate=0.5)
    for _ in range(30):
        d = hero.rank({"device": "tablet", "utm_campaign": "summer"})
        hero.reward(d.event_id, 1.0 if d.action_id == "video" else 0.0)
    hero.flush()
    cells = {t: dict(per) for t, per in hero.trainer.correction.cells.items()}  # type: ignore[union-attr]
    version = hero.trainer.net.step
    first.close()

    def parts(blob: bytes) -> tuple[dict[str, Any], int, int]:
        (size,) = struct.unpack_from("<I", blob)
        meta = orjson.loads(blob[4:4 + size])
        return meta, 4 + size, meta["correction"]["cells_f64"]

    def as_before(blob: bytes) -> bytes:
        meta, at, n = parts(blob)
        saved = meta["correction"]
        assert saved.pop("cells_f64") == n == 5 * sum(len(per) for per in cells.values())
        assert saved["cells"] == []  # what a version before reads: no offsets
        with pytest.raises(ValueError):  # ...and no archive where it reads the network
            RewardNet.from_bytes(blob[at:])
        saved["cells"] = np.frombuffer(blob, dtype="<f8", count=n, offset=at).tolist()
        text = orjson.dumps(meta)
        return struct.pack("<I", len(text)) + text + blob[at + 8 * n:]

    def damaged(blob: bytes) -> bytes:
        _, at, _ = parts(blob)
        return blob[:at] + struct.pack("<d", math.nan) + blob[at + 8:]  # a text's index

    _rewrite_latest(folder, "hero", as_before)
    second = Engine(folder, embedder=embedder, seed=6)
    again = second.loop("hero", actions=["minimal", "video"], correction_rate=0.5)
    assert again.restored and again.trainer.correction.cells == cells  # type: ignore[union-attr]
    second.close()  # saves in the new form again (restored from an older form)
    _rewrite_latest(folder, "hero", damaged)
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        third = Engine(folder, embedder=embedder, seed=7)
        kept = third.loop("hero", actions=["minimal", "video"], correction_rate=0.5)
    assert kept.restored and kept.trainer.net.step == version
    assert kept.trainer.correction.cells == {}  # type: ignore[union-attr]
    assert "correction offsets are unreadable" in caplog.text
    third.close()
    _rewrite_latest(folder, "hero", lambda blob: blob[:-8])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        fourth = Engine(folder, embedder=embedder, seed=8)
        cut = fourth.loop("hero", actions=["minimal", "video"], correction_rate=0.5)
    assert not cut.restored and "unreadable snapshot" in caplog.text
    fourth.close()


def test_a_cell_evicted_by_its_own_step_loses_that_step_only() -> None:
    """An eviction drops a tenth of the offsets, ties included, so in a small table it can
    take a cell its own step has written: that cell's step is lost (as it always was), and the
    step does not fail (it raised KeyError for a first version of the tuples)."""
    c = Correction(rate=0.5, max_cells=3)
    c.update(["a", "b", "c", "d"], "x", 0.0, 1.0)
    assert c.size == _count(c) <= 3


def test_offsets_that_do_not_read_as_cells_are_refused_and_change_nothing() -> None:
    c = Correction(rate=1.0)
    c.update(["device: mobile"], "a", 0.0, 1.0)
    before = dict(c.cells)
    good = c.state()
    for cells in (good["cells"][:-1],  # cut inside a cell
                  np.concatenate([[math.nan], good["cells"][1:]]),  # not finite
                  np.concatenate([[7.0], good["cells"][1:]]),  # no such text
                  np.concatenate([[-1.0], good["cells"][1:]])):  # nor such
        with pytest.raises(ValueError):
            c.restore({**good, "cells": cells})
        assert c.cells == before and c.size == 2


def test_a_sample_moves_its_prediction_as_far_with_many_texts_as_with_one() -> None:
    """The step is shared among a sample's cells: unshared, a Mushroom context (22 texts)
    moved its logit 22 times as far and locked the loop onto one action."""
    totals = []
    for n in (1, 22):
        fix = Correction(rate=0.6)
        texts = tuple(f"attribute{i}: x" for i in range(n))
        fix.update(texts, "eat", 0.0, 1.0)
        totals.append(float(fix.offsets(texts, ["eat"])[0]))
    assert totals[0] == pytest.approx(totals[1], rel=1e-5)
    assert totals[0] == pytest.approx(0.6 * 0.5 / math.sqrt(1.25), rel=1e-5)


def test_memoised_rows_give_the_same_offsets() -> None:
    fix = Correction(rate=2.0)
    ids = [f"a{i}" for i in range(50)]
    rng = np.random.default_rng(3)
    for i in range(500):
        fix.update((f"device: d{i % 3}", f"referrer: r{i % 5}"), ids[i % 50], -2.0,
                   float(rng.random() < 0.3))
    memo: dict[str, np.ndarray] = {}
    texts = ("device: d1", "referrer: r2", "language: never seen")
    first = fix.offsets(texts, ids, memo)
    np.testing.assert_array_equal(first, fix.offsets(texts, ids))
    assert set(memo) == {"", "device: d1", "referrer: r2"}
    row = memo["device: d1"]
    np.testing.assert_array_equal(fix.offsets(texts, ids, memo), first)
    assert memo["device: d1"] is row  # reused, not recomputed


def test_state_is_flat_and_older_rows_still_restore() -> None:
    """The snapshot holds the cells as one flat list of numbers (no list per cell, which cost
    garbage collections at 200,000 cells); snapshots written as rows still load."""
    c = Correction(4.0)
    c.update(["device: tablet", "utm_campaign: summer"], "video", 0.0, 1.0)
    c.update(["device: mobile"], "minimal", 0.0, 0.0)
    state = c.state()
    assert state["texts"] == list(c.cells)
    assert state["cells"].dtype == np.float64 and state["clock"] == 2
    assert len(state["cells"]) == 5 * c.size
    again = Correction(4.0)
    again.restore(state)
    assert again.cells == c.cells and again.size == c.size and again.clock == 2
    as_json = Correction(4.0)  # snapshots before 2026-12-05 hold the cells in their JSON
    as_json.restore(orjson.loads(orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY)))
    assert as_json.cells == c.cells and as_json.size == c.size and as_json.clock == 2
    rows = [[t, a, cell[0], cell[1]] for t, per in c.cells.items() for a, cell in per.items()]
    older = Correction(4.0)
    older.restore(rows)  # no clock: every offset counts as written at restore
    assert {t: {a: cell[:2] for a, cell in per.items()} for t, per in older.cells.items()} == \
        {t: {a: cell[:2] for a, cell in per.items()} for t, per in c.cells.items()}
    assert older.size == c.size
    flat4 = {"texts": state["texts"], "actions": state["actions"],
             "cells": [v for j in range(0, len(state["cells"]), 5)
                       for v in state["cells"][j:j + 4]]}
    older.restore(flat4)
    assert older.size == c.size and older.clock == 0
    assert all(cell[2] == 0 for per in older.cells.values() for cell in per.values())


def test_an_offset_without_samples_fades_by_its_half_life() -> None:
    """Without samples of its own an offset halves every ``half_life`` updates (read lazily,
    and before its next step); offsets that keep getting samples stay where they learned."""
    fix = Correction(rate=2.0, half_life=100)
    texts = ("odor: foul",)
    for _ in range(50):  # "eat" is learned to be bad here
        fix.update(texts, "eat", 0.0, 0.0)
    learned = float(fix.offsets(texts, ["eat"])[0])
    assert learned < -1.0
    for _ in range(200):  # then only "leave" is chosen, and the network is right about it
        fix.update(texts, "leave", logit(0.5), 0.5)
    faded = float(fix.offsets(texts, ["eat"])[0])
    assert faded == pytest.approx(learned * 0.25, rel=1e-3)
    due = learned * 0.5 ** (201 / 100)  # faded once more before the next step...
    fix.update(texts, "eat", 0.0, 1 / (1 + math.exp(-due)))  # ...whose gradient is then ~0
    cells = [fix.cells[t]["eat"][0] for t in ("", "odor: foul")]
    assert sum(cells) == pytest.approx(due, rel=1e-3)
    steady = Correction(rate=2.0)  # no half-life: the offset stays
    for _ in range(50):
        steady.update(texts, "eat", 0.0, 0.0)
    kept = float(steady.offsets(texts, ["eat"])[0])
    for _ in range(200):
        steady.update(texts, "leave", logit(0.5), 0.5)
    assert float(steady.offsets(texts, ["eat"])[0]) == kept


@pytest.mark.parametrize(("strategy", "step"), [
    ("thompson", 2.0), ("squarecb", 2.0), ("epsilon-greedy", 2.0), ("neural-linear", 2.0),
    ("laplace", 0.0), ("ucb", 0.0), ("thompson-dropout", 0.0)])
def test_strategies_that_explore_by_the_network_alone_learn_no_correction(
        tmp_path: Path, embedder: SentenceTransformerEmbedder, strategy: str,
        step: float) -> None:
    """The correction's step follows the strategy unless set: off for the strategies whose
    exploration cannot see its offsets (they locked onto one action with it), and a loop
    that sets it gets what it set."""
    engine = Engine(tmp_path / "ef", embedder=embedder, learner=False)
    try:
        default = engine.loop("a", actions=["minimal", "video"], strategy=strategy)
        chosen = engine.loop("b", actions=["minimal", "video"], strategy=strategy,
                             correction_rate=0.5)
        assert default.settings.correction_rate == step
        assert (default.trainer.correction is None) == (step == 0)
        assert chosen.trainer.correction is not None and chosen.trainer.correction.rate == 0.5
    finally:
        engine.close()


def _count(c: Correction) -> int:
    return sum(len(per) for per in c.cells.values())


def test_a_full_table_drops_its_longest_unwritten_offsets_for_a_new_value() -> None:
    # A flood of values seen once used to fill the table for good: every later value, a new
    # campaign's, got no offset (security audit, 2026-12-05).
    c = Correction(rate=1.0, max_cells=60)
    c.update(["campaign: steady"], "a", 0.0, 1.0)  # an old value...
    for i in range(28):  # ... then a flood fills the table: 1 action cell + 1 + 2 x 28 = 58
        c.update([f"flood: {i}", f"host: {i}"], "a", 0.0, 0.0)
    for _ in range(3):
        c.update(["campaign: steady"], "a", 0.0, 1.0)  # ... still seen: written last
    c.update(["flood: 28"], "a", 0.0, 0.0)  # 59
    c.update(["flood: 29"], "a", 0.0, 0.0)  # 60: full
    assert c.size == _count(c) == 60
    c.update(["campaign: spring-sale"], "a", 0.0, 1.0)  # new at the cap
    assert "campaign: spring-sale" in c.cells  # it got its offset
    assert "campaign: steady" in c.cells and ACTION_CELL in c.cells  # the recent and own stay
    assert "flood: 0" not in c.cells and "host: 0" not in c.cells  # the oldest went
    assert "flood: 27" in c.cells  # only a tenth went
    assert c.size == _count(c) == 60 - 5 + 1
    assert c.cells["campaign: spring-sale"]["a"][0] > 0  # and learned from its reward


def test_a_table_of_action_cells_only_stays_full_without_evicting_them() -> None:
    c = Correction(rate=1.0, max_cells=2)
    c.update([], "a", 0.0, 1.0)
    c.update([], "b", 0.0, 1.0)
    c.update(["campaign: x"], "a", 0.0, 1.0)  # no room, and nothing that may go
    assert set(c.cells) == {ACTION_CELL} and c.size == _count(c) == 2
    assert c.evict() == 0


def test_a_snapshot_of_the_offsets_lets_requests_run_every_few_thousand_cells(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The learner builds the snapshot's cells while requests wait for the interpreter lock:
    it hands the lock over every STATE_CHUNK cells, however the cells fall among texts (it
    did every 4,096 texts, so one text with 200,000 cells held the lock throughout)."""
    c = Correction(rate=1.0, max_cells=20_000)
    for i in range(10_000):  # 10,000 actions, each with one text's cell and its own
        c.update(["device: mobile"], f"item {i}", 0.0, float(i % 2))
    yields: list[int] = []
    monkeypatch.setattr(correction_module, "yield_to_requests", lambda: yields.append(1))
    state = c.state()
    assert len(yields) >= c.size // correction_module.STATE_CHUNK - 1 >= 3
    back = Correction(rate=1.0, max_cells=20_000)
    back.restore(state)
    assert back.cells == c.cells and back.size == c.size == 20_000


def test_the_garbage_collector_stops_tracking_the_offsets_after_a_pass() -> None:
    """Each offset is a tuple of numbers, replaced on each step: after a collection neither
    the offsets nor their texts' tables are tracked, so full collections do not walk them
    (as lists changed in place, 200,000 offsets made every full collection about 45 ms)."""
    c = Correction(rate=1.0)
    for i in range(3000):
        c.update([f"v: {i % 300}", "device: mobile"], f"a{i % 7}", 0.0, float(i % 3 == 0))
    gc.collect()
    assert c.size > 2000
    assert not any(gc.is_tracked(cell) for per in c.cells.values() for cell in per.values())
    assert not any(gc.is_tracked(per) for per in c.cells.values())
    c.update(["v: 1"], "a1", 0.0, 1.0)  # a step writes new ones, untracked again by the next pass
    gc.collect()
    assert not gc.is_tracked(c.cells["v: 1"]) and not gc.is_tracked(c.cells["v: 1"]["a1"])


def test_eviction_survives_a_snapshot_round_trip() -> None:
    c = Correction(rate=1.0, max_cells=40)
    for i in range(60):  # past the cap: several evictions
        c.update([f"v: {i}"], "a" if i % 2 else "b", 0.0, float(i % 3 == 0))
    assert c.size == _count(c) <= 40
    back = Correction(rate=1.0, max_cells=40)
    back.restore(c.state())
    assert back.size == c.size and back.cells == c.cells and back.clock == c.clock


def test_an_eviction_keeps_an_actions_own_offset_however_old() -> None:
    c = Correction(rate=1.0, max_cells=12)
    c.update([], "rare", 0.0, 1.0)  # the action's own cell, written first and never again
    for i in range(12):
        c.update([f"v: {i}"], "a", 0.0, 0.0)
    assert c.cells[ACTION_CELL]["rare"][2] == 1  # older than every text's offset
    assert c.size == _count(c) <= 12
    assert "rare" in c.cells[ACTION_CELL] and "v: 11" in c.cells


def test_an_eviction_takes_a_tenth_when_every_offset_was_written_at_one_step() -> None:
    # A snapshot from before the offsets' clocks restores them all as written at restore: a
    # cutoff by value dropped every text offset at the first eviction (review, 2026-12-05).
    rows = [[f"v: {i}", "a", 0.1, 1.0] for i in range(100)]
    c = Correction(rate=1.0, max_cells=100)
    c.restore(rows)
    c.update(["campaign: new"], "a", 0.0, 1.0)  # the action's cell and the text's: 2 new
    assert c.size == _count(c) == 100 - 10 + 2
    assert "a" in c.cells[ACTION_CELL] and "a" in c.cells["campaign: new"]


def test_a_text_whose_last_offset_an_eviction_took_gets_its_new_one() -> None:
    c = Correction(rate=1.0, max_cells=100)
    c.update([], "b", 0.0, 1.0)  # action b's own cell
    c.update(["campaign: x"], "a", 0.0, 1.0)  # the oldest text offset: (campaign: x, a)
    i = 0
    while c.size < c.max_cells:
        c.update([f"v: {i}"], "a", 0.0, 0.0)
        i += 1
    c.update(["campaign: x"], "b", 0.0, 1.0)  # same text, another action, at the cap
    assert "a" not in c.cells["campaign: x"] and "b" in c.cells["campaign: x"]
    assert c.size == _count(c)


def test_a_context_key_holding_the_text_separator_is_learned_as_it_was_ranked(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    """A context's texts wait joined by a separator; a key that held it was split in two
    when the learner read them back, so the correction learned cells 'a' and 'b: x' instead
    of the text ranked (a review of 2026-12-05). Keys are cleaned as values are."""
    eng = Engine(tmp_path / "ef", embedder=embedder, learner=False, embed_in_background=False)
    try:
        hero = eng.loop("hero", actions=["minimal", "video"])
        d = hero.rank({"a\x1fb": "x", "device": "mobile"})
        hero.reward(d.event_id, 1.0)
        hero.flush()
        assert hero.trainer.correction is not None
        texts = {text for text in hero.trainer.correction.cells if text}
        assert texts == {"a b: x", "device: mobile"}
    finally:
        eng.close()
