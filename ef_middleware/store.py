"""Where an engine keeps its state: model snapshots, embeddings, decisions and rewards.

:class:`Store` is the small interface the engine needs. :class:`DiskcacheStore` is the
embedded default: a diskcache directory (SQLite underneath), safe to share between the worker
processes of one host. A store for many hosts (Redis, not built yet) would implement the same
interface.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import diskcache

from .errors import ConfigurationError
from .journal import RewardJournal, live
from .keytable import KeyTable, checkpoint
from .priority import yield_to_requests

log = logging.getLogger("ef_middleware")

DISK_MIN_FILE_SIZE = 1 << 20  # values below stay in SQLite (diskcache's default: 32 KiB)
MODEL_PREFIX = "model:"  # model snapshots: kept in their own folder (see DiskcacheStore)
MODELS_FOLDER = "models"
REWARD_PREFIX = "reward:"  # rewards: a lean table of their own (see DiskcacheStore)
REWARDS_FILE = "rewards.db"
PURGE_EVERY = 60.0  # seconds between two purges of expired rewards (``maintain``)
PURGE_CHUNK = 200  # expired rewards deleted per transaction: about 2 ms of the write lock
# Single writes (the writer thread's) leave SQLite's checkpoints to the learner (``maintain``);
# past this many WAL pages (about 8 MB) they checkpoint themselves, so the log stays bounded
# when no learner runs. SQLite's default is 1,000 pages.
APPEND_AUTOCHECKPOINT = 2000
# Writes the event loop may make (``try_set``) between two complete checkpoints: about 2,000
# pages of log at ~5 pages a reward, the writer thread's bound. The event loop's connection
# never checkpoints (5-12 ms would stall every request), so past this the writes go to the
# writer thread, whose connection does. With the learner checkpointing every 0.25 s, the
# event loop wrote all but 2 of 4,000 rewards at 400/s and of 6,000 at 600/s, and 94% at
# 1,000/s; checkpointing once a second, 87% at 400/s and 66% at 600/s (the example app in
# process, 10 s each).
INLINE_WRITES = 400


@runtime_checkable
class Store(Protocol):
    """Key-value state with the few atomic operations the engine relies on."""

    def get(self, key: str) -> bytes | None:
        """Return the value stored under ``key``, or ``None``."""

    def set(self, key: str, value: bytes, *, expire: float | None = None) -> None:
        """Store ``value`` under ``key`` (durably), optionally expiring after ``expire`` s."""

    def set_many(self, items: Mapping[str, bytes], *, expire: float | None = None) -> None:
        """Store several values in one transaction."""

    def try_set(self, key: str, value: bytes, *, expire: float | None = None) -> bool:
        """Store ``value`` under ``key`` if that needs no waiting for another writer; return
        whether it was stored. The reward route calls it on the event loop, and hands the
        write to its writer thread when it returns ``False`` (a store whose every write waits,
        on a network for instance, always returns ``False``)."""

    def add(self, key: str, value: bytes, *, expire: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; return whether it was stored (atomic)."""

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    def maintain(self) -> None:
        """Housekeeping that must not run on the request path; the learner thread calls it
        at most every 0.25 s, once a second when idle (a store that needs none does
        nothing)."""

    def close(self) -> None:
        """Release the store's resources."""


def release_thread(store: Store | None) -> None:
    """Close the calling thread's own connections to ``store``, if it keeps any (a
    background thread about to end: diskcache keeps a connection per thread, and an ended
    thread's stayed open, two descriptors each, until a full garbage collection; a review of
    2026-12-05 counted 17 after three opens and closes of one engine)."""
    release = getattr(store, "release_thread", None)
    if release is not None:
        try:
            release()
        except Exception as exc:  # the thread ends anyway
            log.debug("ef_middleware: releasing a thread's store connections: %s", exc)


class _FifoLock:
    """A lock granted in arrival order (a ticket lock).

    ``threading.Lock`` lets the thread that releases it take it straight back: a learner writing
    decisions chunk after chunk would starve a reward waiting between two chunks. Tickets make
    the reward go next.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0
        self._abandoned: set[int] = set()  # tickets whose waiter gave up (interrupted)

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._cond:
            ticket = self._next
            self._next += 1
            try:
                while self._serving != ticket:
                    self._cond.wait()
            except BaseException:  # e.g. KeyboardInterrupt: never leave the queue stuck
                if self._serving == ticket:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
                raise
        try:
            yield
        finally:
            with self._cond:
                self._advance()

    @contextmanager
    def held_if_free(self) -> Iterator[bool]:
        """Hold the lock if nobody holds it or waits for it (yields ``True``); otherwise
        yield ``False`` at once, holding nothing."""
        with self._cond:
            free = self._serving == self._next
            if free:
                self._next += 1
        if not free:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._advance()

    def _advance(self) -> None:
        """Serve the next ticket (skipping abandoned ones); call with ``_cond`` held."""
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()


class DiskcacheStore:
    """The embedded store: one diskcache directory, process-safe on one host.

    Writes from the threads of one process queue on an in-process lock, in arrival order, so
    they never meet in SQLite's busy handler (which polls with sleeps of 1 to 100 ms and made
    a reward wait behind the learner's batch writes for up to hundreds of ms). Writers in other
    processes still meet there.

    Model snapshots (keys starting with ``model:``, about 4 MB each) live in a second diskcache
    folder, ``<directory>/models``, with a queue of their own: writing one takes 7-10 ms, and a
    reward on the request path must not wait behind it. Snapshots written by earlier versions
    into the main folder are still found. A ``set_many`` that mixes snapshot keys with others
    commits them in two transactions, one per folder (the engine never mixes them).

    Rewards (keys starting with ``reward:``, written on the request path) are appended to a
    journal file of this process (:class:`~.journal.RewardJournal`, one ``write`` call, read
    back from memory) and moved by :meth:`maintain` into a lean SQLite table of their own,
    ``<directory>/rewards.db`` (:class:`~.keytable.KeyTable`), with a third queue. Another
    process sees a reward once it is in the table (within 0.25 s with a learner running).
    Rewards an earlier version wrote into the main folder are still found.

    Parameters
    ----------
    directory
        Folder for the cache; created if missing.
    size_limit
        Bytes diskcache may use before it evicts least-recently stored entries (default 4 GiB).

    Examples
    --------
    >>> store = DiskcacheStore("var/ef")              # doctest: +SKIP
    >>> store.set("model:hero", b"...")               # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike[str], *, size_limit: int = 4 << 30) -> None:
        path = os.fspath(directory)
        if not path:
            raise ConfigurationError(
                "DiskcacheStore needs a directory, e.g. DiskcacheStore('var/ef')")
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigurationError(f"the store's path {path!r} is a file, not a folder")
        self.directory = path
        # No eviction by recency for model snapshots: "none" would grow forever, so keep the
        # default least-recently-stored policy with a generous limit. Values under 1 MiB (a
        # chunk of the decision log) stay in SQLite, in the transaction, instead of becoming a
        # file of their own (diskcache's default threshold is 32 KiB).
        self._cache = diskcache.Cache(path, size_limit=size_limit,
                                      disk_min_file_size=DISK_MIN_FILE_SIZE)
        # Single-key writes (rewards, on the request path) go through a second handle that
        # never culls: diskcache's cull after every write costs three more SQL statements
        # (expired rows, page count, size), each a release and re-take of the GIL. The learner's
        # batch writes (set_many) still cull up to 10 expired or evicted entries per key.
        self._append = diskcache.Cache(path, size_limit=size_limit,
                                       disk_min_file_size=DISK_MIN_FILE_SIZE)
        self._append.reset("cull_limit", 0, update=False)
        # The same writes, from the event loop: a connection that never waits for SQLite's
        # write lock (``try_set`` gives up instead of blocking every request).
        self._inline = diskcache.Cache(path, size_limit=size_limit, timeout=0,
                                       disk_min_file_size=DISK_MIN_FILE_SIZE)
        self._inline.reset("cull_limit", 0, update=False)
        self._inline_writes = 0  # since the last complete checkpoint
        self._tuned = threading.local()
        self._writing = _FifoLock()
        self._models = diskcache.Cache(os.path.join(path, MODELS_FOLDER), size_limit=size_limit,
                                       disk_min_file_size=DISK_MIN_FILE_SIZE)
        self._writing_models = _FifoLock()
        self._rewards = KeyTable(os.path.join(path, REWARDS_FILE),
                                 autocheckpoint=APPEND_AUTOCHECKPOINT)
        self._writing_rewards = _FifoLock()
        self._journal = RewardJournal(path, self._apply_rewards)
        self._next_purge = time.monotonic() + PURGE_EVERY

    def _shard(self, key: str) -> tuple[diskcache.Cache, _FifoLock]:
        """The folder and write queue of ``key``: snapshots apart, everything else together."""
        if key.startswith(MODEL_PREFIX):
            return self._models, self._writing_models
        return self._cache, self._writing

    def get(self, key: str) -> bytes | None:
        if key.startswith(REWARD_PREFIX):
            entry = self._journal.get(key)
            if entry is not None:
                return live(entry)
            found = self._rewards.get(key)
            if found is not None:
                return found
        value = self._models.get(key) if key.startswith(MODEL_PREFIX) else None
        if value is None:  # every other key, and snapshots of stores from before the split
            value = self._cache.get(key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, *, expire: float | None = None) -> None:
        if key.startswith(MODEL_PREFIX):
            self.set_many({key: value}, expire=expire)
            return
        if key.startswith(REWARD_PREFIX):
            self._append_rewards([(key, value)], expire)
            return
        with self._writing.held():
            self._tune(self._append).set(key, value, expire=expire)

    def try_set(self, key: str, value: bytes, *, expire: float | None = None) -> bool:
        """Write ``key`` now if that waits for nobody; else write nothing.

        A reward is appended to the journal unless ``LIMIT`` entries wait there to be moved
        (no learner moves them): then :meth:`set` moves them, on the caller's writer thread.
        Another key is written if no thread of this process writes or waits to (the
        in-process queue), no other process holds SQLite's write lock, and fewer than
        ``INLINE_WRITES`` writes came this way since the last complete :meth:`checkpoint`.

        A reward's write took 0.3-0.5 ms in diskcache, 0.1-0.25 ms in its own table, and
        in a lab run on the writer thread the reward route's in-server p99 was 2.3-4.9 ms
        against 1.4-1.9 ms on the event loop (the two threads pass the interpreter lock
        back and forth at each SQLite call). Blocking the event loop for a write that would
        wait is what this must not do.
        """
        if key.startswith(REWARD_PREFIX):
            if self._journal.full():
                return False
            self._journal.append([(key, value)], expire)
            return True
        if key.startswith(MODEL_PREFIX) or self._inline_writes >= INLINE_WRITES:
            return False
        with self._writing.held_if_free() as free:
            if not free:
                return False
            try:
                self._tune(self._inline, 0).set(key, value, expire=expire)
            except diskcache.Timeout:  # another process writes: BEGIN failed, nothing written
                return False
            self._inline_writes += 1
            return True

    def _tune(self, cache: diskcache.Cache,
              pages: int = APPEND_AUTOCHECKPOINT) -> diskcache.Cache:
        """``cache``, with this thread's connection to it checkpointing only past ``pages``
        pages of log, or never (0): a pragma per connection, and diskcache keeps one per
        thread."""
        done: set[int] = self._tuned.__dict__.setdefault("done", set())
        if id(cache) not in done:
            cache.reset("sqlite_wal_autocheckpoint", pages, update=False)
            done.add(id(cache))
        return cache

    def set_many(self, items: Mapping[str, bytes], *, expire: float | None = None) -> None:
        rewards = [(k, v) for k, v in items.items() if k.startswith(REWARD_PREFIX)]
        if rewards:
            self._append_rewards(rewards, expire)
        parts: dict[tuple[diskcache.Cache, _FifoLock], dict[str, bytes]] = {}
        for key, value in items.items():
            if key.startswith(REWARD_PREFIX):
                continue
            parts.setdefault(self._shard(key), {})[key] = value
        for (cache, lock), part in parts.items():
            with lock.held(), cache.transact():
                for key, value in part.items():
                    cache.set(key, value, expire=expire)

    def add(self, key: str, value: bytes, *, expire: float | None = None) -> bool:
        if key.startswith(REWARD_PREFIX):
            if self._cache.get(key) is not None:  # an earlier version's, in the main folder
                return False
            entry = self._journal.get(key)
            if entry is not None:  # the journal's entry is the newest
                if live(entry) is not None:
                    return False
                self._journal.move()  # a dead one: it must not land over the new value
            with self._writing_rewards.held():
                return self._rewards.add(key, value, expire=expire)
        cache, lock = self._shard(key)
        with lock.held():
            return bool(cache.add(key, value, expire=expire))

    def delete(self, key: str) -> None:
        if key.startswith(REWARD_PREFIX):
            self._journal.append([(key, None)])
        cache, lock = self._shard(key)  # rewards: an earlier version's, in the main folder
        with lock.held():
            cache.delete(key)
        if cache is self._models and key in self._cache:  # a snapshot from before the split
            with self._writing.held():
                self._cache.delete(key)

    def maintain(self) -> None:
        """Move the reward journal into the rewards table, checkpoint the SQLite write-ahead
        logs (:meth:`checkpoint`); once a minute, delete the expired rewards, ``PURGE_CHUNK``
        per transaction (diskcache's batch writes cull the other keys)."""
        self._journal.move()
        self.checkpoint()
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY
        deleted = PURGE_CHUNK
        while deleted == PURGE_CHUNK:
            with self._writing_rewards.held():  # the journal's move waits a chunk at most
                deleted = self._rewards.purge(PURGE_CHUNK)
            yield_to_requests()

    def checkpoint(self) -> list[tuple[int, int]]:
        """Copy the write-ahead logs' new pages into the databases, without blocking writers.

        SQLite checkpoints a log once it passes 1,000 pages, in the thread whose commit
        crossed the line, and syncs the database file: 5-12 ms, measured here. When rewards
        were written one by one (about five pages each), one reward in about 200 paid for it,
        on the request path. Single writes now checkpoint only past ``APPEND_AUTOCHECKPOINT``
        pages (the writer thread's connections) or never (the event loop's, for
        ``INLINE_WRITES`` writes between two complete checkpoints), rewards reach SQLite in
        the learner's batches, and the learner calls this every 0.25 s: a ``PASSIVE``
        checkpoint waits for no reader and no writer.

        Returns
        -------
        list of (int, int)
            Per database (the main folder, ``models/``, ``rewards.db``): pages in the log,
            pages checkpointed (SQLite's own answer).
        """
        done = [checkpoint(os.path.join(cache.directory, diskcache.core.DBNAME))
                for cache in (self._cache, self._models)]
        log, checkpointed = done[0]
        if 0 <= log == checkpointed:  # the main folder's whole log is in its database
            self._inline_writes = 0
        done.append(self._rewards.checkpoint())
        return done

    def _append_rewards(self, items: list[tuple[str, bytes]], expire: float | None) -> None:
        """Rewards into the journal from a thread that may block: a full journal (no
        learner moves it) is moved here first."""
        if self._journal.full():
            self._journal.move()
        self._journal.append(items, expire)

    def _apply_rewards(self, entries: list[tuple[str, tuple[bytes | None, float | None]]]
                       ) -> None:
        """The journal's sink: its entries into the rewards table, in one transaction."""
        with self._writing_rewards.held():
            self._rewards.apply(entries)

    def release_thread(self) -> None:
        """Close the calling thread's connections (see :func:`release_thread`); the store
        opens new ones if the thread uses it again."""
        for cache in (self._cache, self._append, self._inline, self._models):
            cache.close()
        self._tuned.__dict__.pop("done", None)  # a new connection is tuned again

    def close(self) -> None:
        self._journal.close()
        self._rewards.close()
        self._models.close()
        self._inline.close()
        self._append.close()
        self._cache.close()
