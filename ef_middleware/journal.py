"""The reward journal: rewards appended to a file of this process, moved into their table later.

A reward must be durable before the reward route answers. Committed to SQLite on the request
path (one ``INSERT`` into :class:`~.keytable.KeyTable`), the write was the reward route's whole
extra cost over a route that does nothing: called in process with 5 ms between requests, the
route's median was 0.56-0.63 ms with the write and 0.40 without it (the no-op's 0.41-0.46),
its CPU per request 166-221 us over the no-op's with it and none without (docs/benchmarks.md,
"The reward journal"). An appended line is one ``write`` system call: the route then cost what
the no-op costs.

The durability is SQLite's with ``synchronous=NORMAL`` (the store's setting): once ``write``
returns, the line is in the operating system's cache and survives the process, not a crash
of the machine. The learner thread moves the journal into the table every 0.25 s
(:meth:`RewardJournal.move`, from the store's ``maintain``), in one transaction, and deletes
the file; a store without a learner moves it when it grows past ``limit`` entries, on the
writer thread (:meth:`RewardJournal.full` makes ``try_set`` decline). Until moved, the
journal answers reads of its keys from memory.

Each process writes files of its own, ``<store>/journal/<pid>-<token>-<n>.log``, and holds an
exclusive ``flock`` on the one it writes. A store that opens the folder moves every file
nobody holds (a process that ended without closing its store) into the table: its lines in
order, so the last value of a key wins. A line is a JSON array ``[key, value, deadline]``
(the value's bytes as Latin-1 text, the deadline a Unix time or ``null``); ``[key, null,
null]`` deletes the key. A line cut short (a crash of the machine mid-write) is skipped with
one log line; a write that fails part-way (a full disk) is cut back off the file at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson

try:  # POSIX; elsewhere files are not locked (run one process per store there)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FOLDER", "LIMIT", "Entry", "RewardJournal", "live", "read_entries"]

log = logging.getLogger("ef_middleware")

FOLDER = "journal"
LIMIT = 2000  # entries kept unmoved before ``full()``: about 0.2 MB of memory and file
STAGING_AGE = 60.0  # s: an unnamed file older than this was left by a crash, not being made
Entry = tuple[bytes | None, float | None]  # (value or None for a deletion, deadline)
Sink = Callable[[list[tuple[str, Entry]]], None]  # writes entries into the table, in order


class RewardJournal:
    """Append-only reward writes of this process, moved into a table by :meth:`move`.

    ``sink`` receives the entries to move, in order (the store writes them into its rewards
    table in one transaction, under its write queue). Thread-safe: the event loop appends,
    the learner thread moves, any thread reads.
    """

    def __init__(self, directory: str | os.PathLike[str], sink: Sink, *,
                 limit: int = LIMIT) -> None:
        self.folder = Path(directory) / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sink = sink
        self.limit = limit
        self._lock = threading.Lock()  # an append, or the swap to a new file
        self._moving_lock = threading.Lock()  # one move at a time
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._files = 0
        self.recovered = self._recover()
        self._fd, self._path = self._open()
        self._size = 0  # bytes in the current file (this process is its only writer)
        self._unmoved: dict[str, Entry] = {}  # appended since the last move
        self._moving: dict[str, Entry] = {}  # being moved: still read from here
        self._held: list[tuple[int, Path]] = []  # older files whose entries are in memory
        self._closed = False

    # -- the request path ---------------------------------------------------------------

    def append(self, items: Iterable[tuple[str, bytes | None]],
               expire: float | None = None) -> None:
        """Write ``(key, value)`` pairs (``None``: delete the key) to the journal; durable
        (against the process's end) when this returns. Raises ``OSError`` if the write
        fails, having changed nothing readable."""
        deadline = None if expire is None else time.time() + expire
        entries = [(key, (value, deadline)) for key, value in items]
        data = b"".join(_line(key, entry) for key, entry in entries)
        with self._lock:
            if self._closed:
                raise OSError("the reward journal is closed")
            if os.fstat(self._fd).st_nlink == 0:
                self._replace_deleted_file()
            self._write(data)
            self._unmoved.update(entries)

    def get(self, key: str) -> Entry | None:
        """The journal's entry for ``key`` if it has one not yet moved (checked before the
        table: a moved entry leaves ``_moving`` only once the table has it)."""
        found = self._unmoved.get(key)
        if found is None:
            found = self._moving.get(key)
        return found

    def full(self) -> bool:
        """Whether ``limit`` entries wait to be moved (no learner moves them)."""
        return len(self._unmoved) >= self.limit

    def __len__(self) -> int:
        return len(self._unmoved) + len(self._moving)

    # -- the background -------------------------------------------------------------------

    def move(self, *, final: bool = False) -> int:
        """Move the entries appended so far into the table and delete their file; return how
        many moved. With ``final``, close the journal: no file is left behind unless the
        move fails (the next store to open the folder moves it then).

        Appends go to a new file meanwhile. The old one stays locked until its entries are
        in the table and it is deleted, so no other store recovers it in between. If the
        table refuses them, they go back to memory and into the new file (a key appended
        again since keeps its newer entry), and the old file is deleted; if the new file
        cannot take them either, the old file is kept, still locked, until a later move has
        landed them.
        """
        with self._moving_lock:
            if self._closed or (not self._unmoved and not final):
                return 0
            fresh = None if final else self._open()  # outside ``_lock``: appends go on
            with self._lock:
                old_fd, old_path = self._fd, self._path
                self._moving, self._unmoved = self._unmoved, {}
                held, self._held = self._held, []
                if fresh is None:
                    self._closed = True
                else:
                    self._fd, self._path = fresh
                    self._size = 0
            held.append((old_fd, old_path))
            moved = list(self._moving.items())
            try:
                if moved:
                    self.sink(moved)
            except BaseException:
                if fresh is None:  # final: the files stay, for the next store
                    for fd, _ in held:
                        os.close(fd)
                else:
                    self._put_back(moved, held)
                self._moving = {}
                raise
            self._moving = {}
            for fd, path in held:
                _unlink(path)
                os.close(fd)
            return len(moved)

    def _put_back(self, entries: list[tuple[str, Entry]],
                  files: list[tuple[int, Path]]) -> None:
        """Entries the table refused: back into memory and into the current file, unless
        appended again since; then ``files``, which held them, are deleted. If the current
        file cannot take them (a full disk), ``files`` are kept, locked, for the next move
        (or, after a crash, the next store: they are older than the current file)."""
        with self._lock:
            back = [(key, entry) for key, entry in entries if key not in self._unmoved]
            self._unmoved = {**dict(back), **self._unmoved}
            try:
                self._write(b"".join(_line(key, entry) for key, entry in back))
            except OSError as exc:
                self._held = files + self._held
                log.warning("ef_middleware: kept %d journal file(s) until the next move: %s",
                            len(files), exc)
                return
        for fd, path in files:
            _unlink(path)
            os.close(fd)

    def _replace_deleted_file(self) -> None:
        """The current file was deleted under us (its folder removed by hand, a clean-up
        job): a write to it would be lost with the process. Carry on in a new file holding
        the entries not yet moved, or raise ``OSError`` (the folder is gone too), so that no
        reward is acknowledged that a restart would not find. Called under ``_lock``."""
        fd, path = self._open()
        old_fd, self._fd, self._path, self._size = self._fd, fd, path, 0
        os.close(old_fd)
        log.warning("ef_middleware: the reward journal's file was deleted; continuing in %s",
                    path.name)
        if self._unmoved:
            self._write(b"".join(_line(key, entry) for key, entry in self._unmoved.items()))

    def _write(self, data: bytes) -> None:
        """Append ``data`` to the current file, all or nothing: a write that fails part-way
        (a full disk) is cut back off the file, so none of its lines is recovered after a
        crash and the next line does not join a torn one. Called under ``_lock``."""
        torn = self._size < 0  # an earlier failure could not be cut off
        if torn:
            data = b"\n" + data  # the torn tail becomes a line of its own, skipped on recovery
        try:
            _write_all(self._fd, data)
        except OSError:
            if not torn:
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    self._size = -1
            raise
        self._size = os.fstat(self._fd).st_size if torn else self._size + len(data)

    def close(self) -> None:
        """Move what is left and delete the file (an unmovable rest stays for recovery)."""
        self.move(final=True)

    # -- files ----------------------------------------------------------------------------

    def _open(self) -> tuple[int, Path]:
        """A new file of this process, locked before it gets its ``.log`` name (a store
        recovering files never sees it unlocked)."""
        self._files += 1
        name = f"{self._token}-{self._files:06d}"
        staging = self.folder / f"{name}.tmp"
        fd = os.open(staging, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        path = self.folder / f"{name}.log"
        os.replace(staging, path)
        return fd, path

    def _recover(self) -> int:
        """Move every journal file no live process holds into the table; return the
        entries moved."""
        moved = 0
        for path in sorted(self.folder.glob("*.log"), key=_order):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # another store recovered it meanwhile
                continue
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its process is alive
                with os.fdopen(os.dup(fd), "rb") as file:
                    entries = list(read_entries(file.read(), str(path)))
                if entries:
                    self.sink(entries)
                    moved += len(entries)
                _unlink(path)
            finally:
                os.close(fd)
        for staging in self.folder.glob("*.tmp"):  # created, never named (a crash): empty
            # Only an old one: another store may be between creating its file and locking it.
            if _age(staging) > STAGING_AGE and not _locked(staging):
                _unlink(staging)
        if moved:
            log.info("ef_middleware: moved %d rewards from journals of ended processes", moved)
        return moved


def read_entries(data: bytes, source: str = "journal") -> Iterator[tuple[str, Entry]]:
    """The entries of a journal file's bytes, in order; a malformed line is skipped and
    logged."""
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw:
            continue
        try:
            key, value, deadline = orjson.loads(raw)
            if not isinstance(key, str) or not (value is None or isinstance(value, str)):
                raise ValueError("not [key, value, deadline]")
            entry = (None if value is None else value.encode("latin-1"),
                     None if deadline is None else float(deadline))
        except (ValueError, TypeError) as exc:
            log.warning("ef_middleware: skipped line %d of %s: %s", number, source, exc)
            continue
        yield key, entry


def _line(key: str, entry: Entry) -> bytes:
    value, deadline = entry
    text = None if value is None else value.decode("latin-1")
    return orjson.dumps([key, text, deadline]) + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _order(path: Path) -> tuple[str, int]:
    """Files of one process in the order it wrote them (their names end in a counter)."""
    stem, _, counter = path.stem.rpartition("-")
    return stem, int(counter) if counter.isdigit() else 0


def _age(path: Path) -> float:
    """Seconds since ``path`` was last modified (0 if it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _locked(path: Path) -> bool:
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def live(entry: Entry | None, now: float | None = None) -> bytes | None:
    """``entry``'s value, or ``None`` if there is none, it deletes its key or it expired."""
    if entry is None:
        return None
    value, deadline = entry
    if deadline is not None and deadline <= (time.time() if now is None else now):
        return None
    return value
