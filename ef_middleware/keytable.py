"""A lean key-value table in an SQLite file of its own, for the rewards.

diskcache stores a key in a table with three indexes and keeps counters beside it: one
``set`` is five or six SQL statements and about five pages of write-ahead log; an ``INSERT``
here is one statement and one to three pages. Rewards reach this table from the reward
journal (:mod:`ef_middleware.journal`) in batches, on the learner thread: the request path
appends to the journal and never waits for SQLite (docs/architecture.md, "State in the
store").

The table is ``key -> (value, expire)``, without a row id (one B-tree) and with a partial index
on ``expire`` so that :meth:`KeyTable.purge` finds expired keys without reading the table.
Connections are per thread (SQLite's own rule); each waits for the write lock (60 s, as
diskcache) and checkpoints past ``autocheckpoint`` pages. WAL journal and
``synchronous=NORMAL``, as diskcache's defaults: a committed write survives the process.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expire REAL)"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS kv_expire ON kv (expire) WHERE expire IS NOT NULL",
)
UPSERT = "INSERT OR REPLACE INTO kv (key, value, expire) VALUES (?, ?, ?)"
# Stored unless a live value is there: a dead (expired) one is overwritten, atomically.
ADD = ("INSERT INTO kv (key, value, expire) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
       " value = excluded.value, expire = excluded.expire"
       " WHERE kv.expire IS NOT NULL AND kv.expire <= ?")


class KeyTable:
    """``get``/``apply``/``add``/``purge`` of bytes with an optional expiry, in ``path``.

    The caller serialises this process's writes (``DiskcacheStore`` queues them); writers in
    other processes meet in SQLite's lock.
    """

    def __init__(self, path: str, *, timeout: float = 60.0, autocheckpoint: int = 1000) -> None:
        self.path = path
        self.timeout = timeout
        self.autocheckpoint = autocheckpoint
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._all_lock = threading.Lock()
        con = self._connection()
        con.execute("PRAGMA journal_mode=WAL")  # persistent in the file
        for statement in SCHEMA:
            con.execute(statement)

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection; making one closes those of threads that have ended (a
        web server's pool retires idle threads: their connections stayed open until
        ``close()``, two descriptors each, 128 of them after ten minutes in an audit's run)."""
        found: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if found is None:
            found = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                    check_same_thread=False)
            found.execute("PRAGMA synchronous=NORMAL")
            found.execute(f"PRAGMA wal_autocheckpoint={self.autocheckpoint}")
            self._local.connection = found
            with self._all_lock:
                ended = [con for thread, con in self._all if not thread.is_alive()]
                self._all = [(thread, con) for thread, con in self._all if thread.is_alive()]
                self._all.append((threading.current_thread(), found))
            for con in ended:
                con.close()
        return found

    def get(self, key: str) -> bytes | None:
        row = self._connection().execute(
            "SELECT value, expire FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return bytes(row[0])

    def apply(self, entries: Iterable[tuple[str, tuple[bytes | None, float | None]]]) -> None:
        """Write ``(key, (value, deadline))`` entries in order, in one transaction: a value
        is stored until its deadline (a Unix time, or ``None`` for ever), ``None`` deletes
        the key (the reward journal's entries, :mod:`ef_middleware.journal`)."""
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            for key, (value, deadline) in entries:
                if value is None:
                    con.execute("DELETE FROM kv WHERE key = ?", (key,))
                else:
                    con.execute(UPSERT, (key, value, deadline))
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def add(self, key: str, value: bytes, *, expire: float | None = None) -> bool:
        """Store ``value`` only if ``key`` has no live value; return whether it was stored."""
        now = time.time()
        deadline = None if expire is None else now + expire
        cursor = self._connection().execute(ADD, (key, value, deadline, now))
        return cursor.rowcount == 1

    def purge(self, limit: int = 1000) -> int:
        """Delete up to ``limit`` expired keys (the index finds them); return how many."""
        cursor = self._connection().execute(
            "DELETE FROM kv WHERE key IN (SELECT key FROM kv WHERE expire IS NOT NULL"
            " AND expire <= ? LIMIT ?)", (time.time(), limit))
        return max(0, cursor.rowcount)

    def __len__(self) -> int:
        """Keys on disk, expired ones included until purged."""
        (count,) = self._connection().execute("SELECT COUNT(*) FROM kv").fetchone()
        return int(count)

    def checkpoint(self) -> tuple[int, int]:
        """:func:`checkpoint` of this table's file."""
        return checkpoint(self.path)

    def close(self) -> None:
        """Close every thread's connections."""
        with self._all_lock:
            connections, self._all = self._all, []
        for _, con in connections:
            con.close()
        self._local = threading.local()


def checkpoint(path: str) -> tuple[int, int]:
    """A ``PASSIVE`` checkpoint of the SQLite file ``path``, which waits for no reader and no
    writer; returns SQLite's (pages in the log, pages checkpointed).

    Through a connection of its own, closed at once: checkpointing through one that stays
    open (ours or diskcache's), the writers never started the log over in a lab run, and it
    grew until their own threshold; with this one they do (the store tests). Opening it costs
    about 0.3 ms of CPU (SQLite reads the schema).

    Only SQLite opens the database's files in this process: SQLite's locks are POSIX record
    locks, which the process loses on *every* descriptor of the file when *any* descriptor
    of it is closed. Reading the shared-memory index (``-shm``) with a plain ``open`` and
    ``close`` dropped the lock that tells other processes the index is in use, and the next
    process to open the database reset the index under this one's memory map: the engine
    died of ``SIGBUS`` (a concurrency audit, 2026-12-05; the store test
    ``test_a_checkpoint_keeps_sqlites_locks``). SQLite's own connections share its
    bookkeeping of open files and close none while another connection holds locks.
    """
    con = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        _, log, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        con.close()
    return int(log), int(done)
