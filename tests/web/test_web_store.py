"""The store under the reward route: writes of one process in arrival order, decisions
persisted in small transactions (real diskcache folders, real model)."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import diskcache
import pytest
from web_helpers import ACTIONS

from ef_middleware import Engine, SentenceTransformerEmbedder
from ef_middleware import journal as journal_module
from ef_middleware import keytable as keytable_module
from ef_middleware import store as store_module
from ef_middleware.loop import PERSIST_CHUNK
from ef_middleware.store import DiskcacheStore


def _wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def test_writes_are_served_in_arrival_order(tmp_path: Path) -> None:
    """A writer that waits is served before one that comes later, even if the holder comes
    straight back (threading.Lock would let it barge in)."""
    store = DiskcacheStore(tmp_path / "store")
    order: list[str] = []
    for handle in (store._cache, store._append):
        def recording_set(key: str, value: bytes, *, _real: object = handle.set,
                          **kwargs: object) -> bool:
            order.append(key)
            return bool(_real(key, value, **kwargs))  # type: ignore[operator]

        handle.set = recording_set
    lock = store._writing
    try:
        with lock.held():
            first = threading.Thread(target=store.set, args=("first", b"1"))
            first.start()
            _wait_for(lambda: lock._next == 2, "the first writer to queue")
            second = threading.Thread(target=store.set_many, args=({"second": b"2"},))
            second.start()
            _wait_for(lambda: lock._next == 3, "the second writer to queue")
        first.join()
        second.join()
        assert order == ["first", "second"]
        assert store.get("first") == b"1" and store.get("second") == b"2"
    finally:
        store.close()


def test_rewards_are_journaled_then_moved_into_their_table(tmp_path: Path) -> None:
    """A reward write appends a line to this process's journal file and touches no SQLite
    file; the reward is read back at once; ``maintain`` (the learner thread) moves the journal
    into the rewards table in one transaction and deletes the file, while rewards keep coming
    into a new one."""
    store = DiskcacheStore(tmp_path / "store")
    try:
        record = json.dumps({"value": 1.0, "time": time.time()}).encode()
        written = 0

        def rewards(n: int) -> None:
            nonlocal written
            for _ in range(n):
                store.set(f"reward:hero:{written:032x}", record, expire=86_400)
                written += 1

        wal = tmp_path / "store" / "rewards.db-wal"
        before = wal.stat().st_size if wal.exists() else 0
        rewards(500)
        [journal] = (tmp_path / "store" / "journal").glob("*.log")
        lines = journal.read_bytes().splitlines()
        assert len(lines) == 500 and json.loads(lines[0])[:2] == [f"reward:hero:{0:032x}",
                                                                 record.decode()]
        assert len(store._rewards) == 0
        assert (wal.stat().st_size if wal.exists() else 0) == before
        assert all(store.get(f"reward:hero:{i:032x}") == record for i in range(500))

        more = threading.Thread(target=rewards, args=(300,))
        more.start()
        store.maintain()  # meanwhile: never blocks the writer, nor fails
        more.join()
        store.maintain()
        assert len(store._rewards) == 800 and not journal.exists()
        assert [p.read_bytes() for p in (tmp_path / "store" / "journal").glob("*.log")] == [b""]
        assert all(store.get(f"reward:hero:{i:032x}") == record for i in range(written))
    finally:
        store.close()
    assert list((tmp_path / "store" / "journal").iterdir()) == []  # closed: all moved


def test_the_learner_thread_runs_the_store_maintenance(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    class Maintained(DiskcacheStore):
        calls = 0

        def maintain(self) -> None:
            Maintained.calls += 1
            super().maintain()

    engine = Engine(store=Maintained(tmp_path / "store"), embedder=embedder)
    try:
        engine.loop("hero", actions=ACTIONS)  # starts the learner
        _wait_for(lambda: Maintained.calls >= 2, "two maintenance passes")
    finally:
        engine.close()


class CountingStore(DiskcacheStore):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.batches: list[int] = []

    def set_many(self, items: Mapping[str, bytes], *, expire: float | None = None) -> None:
        for key, value in items.items():
            if key.startswith("decisions:"):
                self.batches.append(len(value.splitlines()))
        super().set_many(items, expire=expire)


def test_decisions_are_persisted_in_small_transactions(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    store = CountingStore(tmp_path / "store")
    engine = Engine(store=store, embedder=embedder, learner=False)
    try:
        loop = engine.loop("hero", actions=ACTIONS)
        count = 2 * PERSIST_CHUNK + 3
        ids = [loop.rank({"device": "mobile", "hour": 9}).event_id for _ in range(count)]
        loop.learn_pending()
        assert store.batches == [PERSIST_CHUNK, PERSIST_CHUNK, 3]
        logged = [json.loads(line)["event_id"] for key in store._cache.iterkeys()
                  if key.startswith("decisions:hero:")
                  for line in store.get(key).splitlines()]  # type: ignore[union-attr]
        assert sorted(logged) == sorted(ids)
    finally:
        engine.close()


def test_single_writes_leave_culling_to_batch_writes(tmp_path: Path) -> None:
    """A single write skips diskcache's cull (three SQL statements); the learner's batch
    writes still remove expired entries."""
    store = DiskcacheStore(tmp_path / "store")
    try:
        store.set("event:old", b"1", expire=0.001)
        time.sleep(0.01)
        store.set("event:new", b"2")
        assert len(store._cache) == 2  # the expired one is still on disk
        store.set_many({"decision:new": b"3"})
        assert len(store._cache) == 2 and store.get("event:old") is None
        assert store.get("event:new") == b"2" and store.get("decision:new") == b"3"
    finally:
        store.close()


def test_rewards_have_a_table_of_their_own(tmp_path: Path) -> None:
    """Rewards reach ``rewards.db`` through the journal, expire there, are purged by
    ``maintain``, and rewards an earlier version wrote into the main folder are still found,
    refused by ``add`` and deleted."""
    store = DiskcacheStore(tmp_path / "store")
    try:
        store.set("reward:hero:a", b"1")
        assert store.try_set("reward:hero:b", b"2")
        store.set_many({"reward:hero:c": b"3", "decisions:hero:1": b"{}"})
        assert (tmp_path / "store" / "rewards.db").is_file()
        store.maintain()  # the journal into the table
        assert len(store._rewards) == 3 and "reward:hero:a" not in store._cache
        assert set(store._cache.iterkeys()) == {"decisions:hero:1"}
        assert [store.get(f"reward:hero:{k}") for k in "abc"] == [b"1", b"2", b"3"]

        assert not store.add("reward:hero:a", b"again") and store.get("reward:hero:a") == b"1"
        store.set("reward:hero:old", b"4", expire=0.001)
        time.sleep(0.01)
        assert store.get("reward:hero:old") is None  # expired, still on disk
        assert store.add("reward:hero:old", b"5") and store.get("reward:hero:old") == b"5"
        store.set("reward:hero:gone", b"6", expire=0.001)
        time.sleep(0.01)
        store.maintain()  # the first purge comes a minute after start
        assert len(store._rewards) == 5
        store._next_purge = 0.0
        store.maintain()
        assert len(store._rewards) == 4 and store.get("reward:hero:old") == b"5"

        store._cache.set("reward:hero:legacy", b"7")  # written before the table
        assert store.get("reward:hero:legacy") == b"7"
        assert not store.add("reward:hero:legacy", b"8")
        store.delete("reward:hero:legacy")
        store.delete("reward:hero:a")
        assert store.get("reward:hero:legacy") is None and store.get("reward:hero:a") is None
    finally:
        store.close()
    reopened = DiskcacheStore(tmp_path / "store")  # durable: another process would see them
    try:
        assert reopened.get("reward:hero:b") == b"2" and reopened.get("reward:hero:c") == b"3"
    finally:
        reopened.close()


def test_expired_rewards_are_purged_in_chunks(tmp_path: Path) -> None:
    store = DiskcacheStore(tmp_path / "store")
    try:
        count = 2 * store_module.PURGE_CHUNK + 7
        store.set_many({f"reward:hero:{i}": b"1" for i in range(count)}, expire=0.001)
        store.set("reward:hero:kept", b"2", expire=3600)
        time.sleep(0.01)
        store._next_purge = 0.0
        store.maintain()
        assert len(store._rewards) == 1 and store.get("reward:hero:kept") == b"2"
    finally:
        store.close()


def test_a_writer_that_gives_up_waiting_does_not_block_the_next(tmp_path: Path) -> None:
    store = DiskcacheStore(tmp_path / "store")
    lock = store._writing
    real_wait = lock._cond.wait
    failed: list[BaseException] = []

    def interrupted(timeout: float | None = None) -> bool:
        if threading.current_thread().name == "quitter":
            raise KeyboardInterrupt
        return real_wait(timeout)

    lock._cond.wait = interrupted  # type: ignore[method-assign]

    def quit_waiting() -> None:
        try:
            store.set("never", b"0")
        except KeyboardInterrupt as exc:
            failed.append(exc)

    try:
        with lock.held():
            quitter = threading.Thread(target=quit_waiting, name="quitter")
            quitter.start()
            quitter.join()
        writer = threading.Thread(target=store.set, args=("after", b"1"))
        writer.start()
        writer.join(timeout=10)
        assert not writer.is_alive(), "the abandoned ticket blocked the queue"
        assert failed and store.get("after") == b"1" and store.get("never") is None
    finally:
        store.close()


def test_model_snapshots_have_their_own_folder_and_queue(tmp_path: Path) -> None:
    """A reward never waits behind a snapshot write: snapshots go to ``models/`` with a write
    queue of their own, and snapshots an earlier version left in the main folder still load."""
    store = DiskcacheStore(tmp_path / "store")
    try:
        store._cache.set("model:hero:v100", b"legacy")  # written before the split
        store.set_many({"model:hero:v200": b"new", "model:hero:latest": b"v200",
                        "decisions:hero:1": b"{}"})
        assert set(store._models.iterkeys()) == {"model:hero:v200", "model:hero:latest"}
        assert set(store._cache.iterkeys()) == {"model:hero:v100", "decisions:hero:1"}
        assert store.get("model:hero:v100") == b"legacy"
        assert store.get("model:hero:latest") == b"v200"
        assert (tmp_path / "store" / "models").is_dir()

        done = threading.Event()
        with store._writing_models.held():  # a snapshot being written
            writer = threading.Thread(
                target=lambda: (store.set("reward:hero:e1", b"1"), done.set()))
            writer.start()
            assert done.wait(10), "the reward waited for the snapshot"
        writer.join()
        assert store.get("reward:hero:e1") == b"1"

        store.delete("model:hero:v100")
        store.delete("model:hero:v200")
        assert store.get("model:hero:v100") is None and store.get("model:hero:v200") is None
    finally:
        store.close()


def test_try_set_writes_only_when_nobody_writes(tmp_path: Path) -> None:
    """``try_set`` (the reward route, on the event loop) writes when the store is free, and
    gives up at once, writing nothing, while a thread of this process holds or waits for the
    write queue, or another process holds SQLite's write lock."""
    store = DiskcacheStore(tmp_path / "store")
    try:
        assert store.try_set("free", b"1") and store.get("free") == b"1"
        with store._writing.held():  # a writer of this process, mid-write
            assert not store.try_set("queued", b"2")
        assert store.get("queued") is None
        # Another process's write transaction (a connection of its own, as it would have).
        other = sqlite3.connect(tmp_path / "store" / diskcache.core.DBNAME,
                                isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        assert not store.try_set("locked", b"3")
        assert time.monotonic() - started < 1.0  # gave up: diskcache's own timeout is 60 s
        other.execute("ROLLBACK")
        other.close()
        assert store.get("locked") is None
        assert store._writing._serving == store._writing._next  # the queue is free again
        assert store.try_set("locked", b"3") and store.get("locked") == b"3"
        assert not store.try_set("model:hero:v1", b"blob")  # snapshots: never on the loop
    finally:
        store.close()


def test_try_set_of_a_reward_never_waits_for_sqlite(tmp_path: Path) -> None:
    """A reward on the event loop is appended to the journal while the rewards table's queue
    is held in this process or its SQLite lock in another; only a full journal (``LIMIT``
    entries that no learner moved) declines it, and ``set``, on the writer thread, then moves
    the journal before appending."""
    store = DiskcacheStore(tmp_path / "store")
    store._journal.limit = 5
    try:
        other = sqlite3.connect(tmp_path / "store" / "rewards.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with store._writing.held(), store._writing_rewards.held():
            started = time.monotonic()
            assert all(store.try_set(f"reward:hero:{i}", b"1") for i in range(5))
            assert time.monotonic() - started < 1.0
            assert not store.try_set("reward:hero:5", b"1")
        other.execute("ROLLBACK")
        other.close()
        assert store.get("reward:hero:5") is None and len(store._rewards) == 0
        store.set("reward:hero:5", b"1")
        assert len(store._rewards) == 5 and len(store._journal) == 1
        assert all(store.get(f"reward:hero:{i}") == b"1" for i in range(6))
    finally:
        store.close()


def test_rewards_written_while_the_journal_moves_all_land(tmp_path: Path) -> None:
    """Two threads write rewards (each key many times, as ``sum`` does) while a third moves
    the journal again and again (at least 20 times meanwhile): every reward is readable at
    every moment after its write, and the table ends with each key's last value."""
    store = DiskcacheStore(tmp_path / "store")
    missing: list[str] = []
    last: dict[str, bytes] = {}
    done = threading.Event()

    def write(prefix: str) -> None:
        i = 0
        while i < 1000 or store._journal._files < 21:  # each move with entries opens a file
            key, value = f"reward:hero:{prefix}{i % 400}", f"{i}".encode()
            store.set(key, value)
            last[key] = value
            earlier = f"reward:hero:{prefix}{(i - 50) % 400}"  # most likely being moved
            for k in (key, earlier) if i >= 50 else (key,):
                if store.get(k) != last[k]:
                    missing.append(k)
            i += 1

    def move() -> None:
        while not done.is_set():
            store.maintain()

    try:
        mover = threading.Thread(target=move)
        mover.start()
        writers = [threading.Thread(target=write, args=(p,)) for p in "ab"]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        done.set()
        mover.join()
        store.maintain()
        assert not missing
        assert len(store._rewards) == 800 and len(store._journal) == 0
        assert all(store._rewards.get(key) == value for key, value in last.items())
    finally:
        store.close()


def test_a_move_the_table_refuses_keeps_the_rewards(tmp_path: Path) -> None:
    """If the rewards table refuses a move (a full disk, say), the rewards stay readable and
    go into the journal's next file, a key written again meanwhile keeps its newer value, and
    the next move lands them; a final move that fails leaves its file for the next store."""
    store = DiskcacheStore(tmp_path / "store")
    real_apply = store._rewards.apply
    failing = True
    meanwhile = ["reward:hero:b"]

    def apply(entries: list[tuple[str, tuple[bytes | None, float | None]]]) -> None:
        if failing:
            for key in meanwhile:
                store.set(key, b"newer")  # on the event loop, during the move
            meanwhile.clear()
            raise sqlite3.OperationalError("database or disk is full")
        real_apply(entries)

    store._rewards.apply = apply  # type: ignore[method-assign]
    try:
        store.set("reward:hero:a", b"1")
        store.set("reward:hero:b", b"2")
        with pytest.raises(sqlite3.OperationalError):
            store._journal.move()
        [current] = (tmp_path / "store" / "journal").glob("*.log")
        assert [json.loads(line)[:2] for line in current.read_bytes().splitlines()] == [
            ["reward:hero:b", "newer"], ["reward:hero:a", "1"]]
        assert store.get("reward:hero:a") == b"1" and store.get("reward:hero:b") == b"newer"
        failing = False
        assert store._journal.move() == 2 and not current.exists()
        assert len(store._rewards) == 2 and store.get("reward:hero:b") == b"newer"

        store.set("reward:hero:c", b"3")
        failing = True
        with pytest.raises(sqlite3.OperationalError):
            store.close()
        [left] = (tmp_path / "store" / "journal").glob("*.log")
    finally:
        failing = False
        store.close()
    reopened = DiskcacheStore(tmp_path / "store")
    try:
        assert reopened._journal.recovered == 1 and not left.exists()
        assert reopened.get("reward:hero:c") == b"3"
    finally:
        reopened.close()


def _journal_and_die(directory: str, count: int) -> None:
    """In another process: write ``count`` rewards and a deletion, then end without closing
    the store (a crash, as far as the store can tell)."""
    store = DiskcacheStore(directory)
    store._journal.limit = count + 10
    for i in range(count):
        assert store.try_set(f"reward:hero:{i}", f'{{"value": {i}}}'.encode(), expire=3600)
    store.set("reward:hero:0", b'{"value": 100}')  # a later value of the same key wins
    store.delete("reward:hero:1")
    os._exit(0)


def test_a_journal_left_by_an_ended_process_is_moved_on_open(tmp_path: Path) -> None:
    """Rewards journaled by a process that ended without closing its store reach the table
    when the next store opens the folder, in order; a line cut short is skipped."""
    directory = str(tmp_path / "store")
    DiskcacheStore(directory).close()
    child = multiprocessing.get_context("spawn").Process(target=_journal_and_die,
                                                          args=(directory, 50))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    [left] = (tmp_path / "store" / "journal").glob("*.log")
    with left.open("ab") as file:
        file.write(b'["reward:hero:torn", "{\"val')  # a machine crash mid-write
    store = DiskcacheStore(directory)
    try:
        assert store._journal.recovered == 52 and not left.exists()
        assert len(store._rewards) == 49 and store.get("reward:hero:torn") is None
        assert store.get("reward:hero:0") == b'{"value": 100}'
        assert store.get("reward:hero:1") is None and store.get("reward:hero:49") is not None
    finally:
        store.close()


def _journal_past_a_full_disk(directory: str, cut_fails: bool) -> None:
    """In another process: a reward, one whose write the kernel cuts short (a file-size
    limit stands in for a full disk), another once there is room again, then the end
    without closing the journal. ``cut_fails``: cutting the torn bytes off fails too."""
    import resource  # POSIX; Python ignores SIGXFSZ, so the write fails with EFBIG

    journal = journal_module.RewardJournal(directory, lambda entries: None)
    journal.append([("reward:hero:a", b"1")])
    [path] = journal.folder.glob("*.log")
    size = path.stat().st_size
    if cut_fails:
        def ftruncate(fd: int, length: int) -> None:
            raise OSError(5, "Input/output error")

        os.ftruncate = ftruncate  # this child's own module: nothing else runs here
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
    try:
        journal.append([("reward:hero:b", b"2" * 100)])
    except OSError:
        pass
    else:
        raise AssertionError("the write past the limit did not fail")
    # The 10 bytes the kernel wrote were cut off, or stay when the cut failed.
    assert path.stat().st_size == size + (10 if cut_fails else 0)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert journal.get("reward:hero:b") is None  # the failed write changed nothing readable
    journal.append([("reward:hero:c", b"3")])
    journal.append([("reward:hero:d", b"4")])
    os._exit(0)


@pytest.mark.parametrize("cut_fails", [False, True], ids=["cut", "cut-fails"])
def test_a_write_cut_short_leaves_no_torn_line(tmp_path: Path, cut_fails: bool,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A journal write that fails part-way is cut back off the file: after a crash the
    rewards before and after it are recovered, and nothing of the failed one. If the cut
    fails too, the next line starts on a line of its own: only the torn piece is skipped."""
    directory = str(tmp_path / "store")
    child = multiprocessing.get_context("spawn").Process(target=_journal_past_a_full_disk,
                                                          args=(directory, cut_fails))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    moved: list[tuple[str, journal_module.Entry]] = []
    with caplog.at_level("WARNING", logger="ef_middleware"):
        journal_module.RewardJournal(directory, moved.extend).close()
    assert [(key, value) for key, (value, _) in moved] == [
        ("reward:hero:a", b"1"), ("reward:hero:c", b"3"), ("reward:hero:d", b"4")]
    skipped = [r for r in caplog.records if "skipped line" in r.getMessage()]
    assert len(skipped) == (1 if cut_fails else 0)


def _refused_move_past_a_full_disk(directory: str) -> None:
    """In another process: a move the table refuses while the new file cannot take the
    rewards back either (a file-size limit stands in for a full disk); then a move that
    lands, a reward after it, and the end without closing the journal."""
    import resource

    moved: list[tuple[str, journal_module.Entry]] = []
    refuse = True

    def sink(entries: list[tuple[str, journal_module.Entry]]) -> None:
        if refuse:
            raise OSError("database or disk is full")
        moved.extend(entries)

    journal = journal_module.RewardJournal(directory, sink)
    journal.append([("reward:hero:a", b"1"), ("reward:hero:b", b"2")])
    [old] = journal.folder.glob("*.log")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    try:
        journal.move()
    except OSError as exc:
        assert str(exc) == "database or disk is full"  # the table's error, not the file's
    else:
        raise AssertionError("the refused move did not raise")
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert old.exists() and len(list(journal.folder.glob("*.log"))) == 2
    assert journal.get("reward:hero:a") == (b"1", None)  # still readable, from memory
    journal.append([("reward:hero:b", b"newer")])
    refuse = False
    assert journal.move() == 2 and not old.exists()
    assert moved == [("reward:hero:a", (b"1", None)), ("reward:hero:b", (b"newer", None))]
    journal.append([("reward:hero:c", b"3")])
    assert str(old) not in _open_files()  # its descriptor was closed with it
    os._exit(0)


def _open_files() -> set[str]:
    """What this process's file descriptors point to (Linux), deleted files included."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone
            found.add(os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)"))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")
def test_a_refused_move_keeps_its_file_when_the_rewards_cannot_go_back(
        tmp_path: Path) -> None:
    """A move the table refuses while the journal's new file cannot take the rewards back:
    they stay readable, the old file is kept (locked) until a later move lands them, and
    then it is deleted and closed; after a crash, only what came after is left."""
    directory = str(tmp_path / "store")
    child = multiprocessing.get_context("spawn").Process(
        target=_refused_move_past_a_full_disk, args=(directory,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    moved: list[tuple[str, journal_module.Entry]] = []
    journal_module.RewardJournal(directory, moved.extend).close()
    assert [(key, value) for key, (value, _) in moved] == [("reward:hero:c", b"3")]


def test_a_deleted_journal_file_is_replaced_and_a_deleted_folder_refuses_rewards(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Appends to a file deleted under the journal would be lost with the process, though
    acknowledged: the journal carries on in a new file with everything not yet moved, and
    without its folder it raises (the reward route answers an error instead of 204)."""
    directory = tmp_path / "store"
    moved: list[tuple[str, journal_module.Entry]] = []
    journal = journal_module.RewardJournal(directory, moved.extend)
    journal.append([("reward:hero:a", b"1")])
    [first] = journal.folder.glob("*.log")
    first.unlink()
    with caplog.at_level(logging.WARNING, logger="ef_middleware"):
        journal.append([("reward:hero:b", b"2")])
    assert len([r for r in caplog.records if "was deleted" in r.getMessage()]) == 1
    [second] = journal.folder.glob("*.log")
    assert [key for key, _ in journal_module.read_entries(second.read_bytes())] == [
        "reward:hero:a", "reward:hero:b"]
    shutil.rmtree(directory)
    with pytest.raises(OSError):
        journal.append([("reward:hero:c", b"3")])
    assert journal.get("reward:hero:c") is None


def test_only_an_old_unnamed_journal_file_is_cleared(tmp_path: Path) -> None:
    """A file created but never named (a crash in between) is deleted when a store opens the
    folder, unless it is recent: another store may be between creating and locking it."""
    folder = tmp_path / "store" / "journal"
    folder.mkdir(parents=True)
    old, fresh = folder / "1-aa-000001.tmp", folder / "2-bb-000001.tmp"
    old.touch()
    fresh.touch()
    stale = time.time() - 2 * journal_module.STAGING_AGE
    os.utime(old, (stale, stale))
    DiskcacheStore(tmp_path / "store").close()
    assert not old.exists() and fresh.exists()


def test_a_live_store_keeps_its_journal(tmp_path: Path) -> None:
    """A second store opening the folder (another worker) leaves the first one's journal
    alone: the file is locked while its store is open."""
    first = DiskcacheStore(tmp_path / "store")
    try:
        first.set("reward:hero:a", b"1")
        second = DiskcacheStore(tmp_path / "store")
        try:
            assert second._journal.recovered == 0 and second.get("reward:hero:a") is None
            assert first.get("reward:hero:a") == b"1"
            first.maintain()
            assert second.get("reward:hero:a") == b"1"  # moved: now in the shared table
        finally:
            second.close()
    finally:
        first.close()


def test_writes_on_the_event_loop_leave_checkpoints_to_the_learner(tmp_path: Path) -> None:
    """``try_set``'s connection never checkpoints (5-12 ms would stall every request): past
    ``INLINE_WRITES`` writes since the last complete checkpoint it declines, and the writes
    go to the writer thread, whose connection checkpoints past its threshold."""
    store = DiskcacheStore(tmp_path / "store")
    try:
        limit = store_module.INLINE_WRITES
        for i in range(limit):
            assert store.try_set(f"event:{i}", b'{"value": 1.0}')
        assert not store.try_set("event:last", b'{"value": 1.0}')
        log, checkpointed = store.checkpoint()[0]
        # At least a page a write: the log was never checkpointed and started over.
        assert log >= limit and checkpointed == log
        assert store.try_set("event:last", b'{"value": 1.0}')
    finally:
        store.close()


_DMS_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
except OSError:
    print("held")
else:
    print("free")
"""


def _index_in_use(shm: Path) -> bool:
    """Whether another process would see SQLite's shared index ``shm`` in use: SQLite's
    connections hold a shared lock on its byte 128 (the "DMS" slot), and a process that gets
    that byte exclusively takes itself for the only user and resets the index."""
    out = subprocess.run([sys.executable, "-c", _DMS_PROBE, str(shm)], capture_output=True,
                         text=True, check=True, timeout=60)
    return out.stdout.strip() == "held"


def test_a_checkpoint_keeps_sqlites_locks(tmp_path: Path) -> None:
    """The learner checkpoints the store's SQLite files every 0.25 s. A checkpoint that read
    the shared index with a plain open and close dropped the process's SQLite locks on it
    (POSIX locks go with any descriptor's close), and a second process opening the store
    then reset the index under the engine, which died of SIGBUS."""
    path = str(tmp_path / "table.db")
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode=wal")
        writer.execute("CREATE TABLE t (a)")
        writer.execute("INSERT INTO t VALUES (1)")
        assert _index_in_use(tmp_path / "table.db-shm")
        log, done = keytable_module.checkpoint(path)
        assert log == done > 0
        assert _index_in_use(tmp_path / "table.db-shm")
    finally:
        writer.close()

    store = DiskcacheStore(tmp_path / "store")
    try:
        store.set("model:hero:1", b"x" * 10_000)
        store.set("reward:hero:e1", b'{"value": 1.0}')
        store.set("decisions:hero:1", b"{}")
        store.maintain()
        store.maintain()
        indexes = sorted((tmp_path / "store").rglob("*.db-shm"))
        assert len(indexes) >= 2
        assert all(_index_in_use(shm) for shm in indexes), indexes
    finally:
        store.close()


def _write_rewards(directory: str, prefix: str, count: int) -> int:
    """In another process: write ``count`` rewards, as the reward route does (at once if the
    store takes them, else waiting); return how many were taken at once."""
    store = DiskcacheStore(directory)
    at_once = 0
    try:
        for i in range(count):
            key = f"reward:hero:{prefix}{i}"
            if store.try_set(key, b'{"value": 1.0}', expire=3600):
                at_once += 1
            else:
                store.set(key, b'{"value": 1.0}', expire=3600)
    finally:
        store.close()
    return at_once


def test_processes_sharing_a_folder_share_the_rewards_table(tmp_path: Path) -> None:
    """Two worker processes on one store folder write rewards at the same time: every reward
    lands and is read back. (Whether a write meets the other process's lock is up to the
    timing; the declined path is tested with a held lock in
    ``test_try_set_of_a_reward_writes_only_when_nobody_writes``.)"""
    directory = str(tmp_path / "store")
    DiskcacheStore(directory).close()  # the folder and table exist before the race
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_write_rewards, [(directory, "a", 400), (directory, "b", 400)])
    assert all(0 < n <= 400 for n in results)
    store = DiskcacheStore(directory)
    try:
        assert len(store._rewards) == 800
        assert all(store.get(f"reward:hero:{p}{i}") == b'{"value": 1.0}'
                   for p in "ab" for i in range(400))
    finally:
        store.close()


def _descriptors_on(path: Path) -> int:
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found += 1
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    # A web server's thread pool retires idle threads and starts new ones: each new thread
    # that read the rewards' table left its connection open until close() (soak audit,
    # 2026-12-05: 128 descriptors on rewards.db after ten minutes).
    table = keytable_module.KeyTable(str(tmp_path / "t.db"))
    try:
        table.apply([("k", (b"v", None))])
        for _ in range(30):
            reader = threading.Thread(target=table.get, args=("k",))
            reader.start()
            reader.join()
        assert table.get("k") == b"v"
        assert _descriptors_on(tmp_path / "t.db") <= 3  # this thread's, the last reader's
    finally:
        table.close()
    assert _descriptors_on(tmp_path / "t.db") == 0
