"""Where an engine keeps its state: model snapshots, embeddings, decisions and rewards.

:class:`Store` is the small interface the engine needs. :class:`DiskcacheStore` is the
embedded default: a diskcache directory (SQLite underneath), safe to share between the worker
processes of one host. A Redis store for many hosts implements the same interface.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import diskcache

from .errors import ConfigurationError


@runtime_checkable
class Store(Protocol):
    """Key-value state with the few atomic operations the engine relies on."""

    def get(self, key: str) -> bytes | None:
        """Return the value stored under ``key``, or ``None``."""

    def set(self, key: str, value: bytes, *, expire: float | None = None) -> None:
        """Store ``value`` under ``key`` (durably), optionally expiring after ``expire`` s."""

    def set_many(self, items: Mapping[str, bytes], *, expire: float | None = None) -> None:
        """Store several values in one transaction."""

    def add(self, key: str, value: bytes, *, expire: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; return whether it was stored (atomic)."""

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    def close(self) -> None:
        """Release the store's resources."""


class DiskcacheStore:
    """The embedded store: one diskcache directory, process-safe on one host.

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
        self.directory = path
        # No eviction by recency for model snapshots: "none" would grow forever, so keep the
        # default least-recently-stored policy with a generous limit.
        self._cache = diskcache.Cache(path, size_limit=size_limit)

    def get(self, key: str) -> bytes | None:
        value = self._cache.get(key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, *, expire: float | None = None) -> None:
        self._cache.set(key, value, expire=expire)

    def set_many(self, items: Mapping[str, bytes], *, expire: float | None = None) -> None:
        with self._cache.transact():
            for key, value in items.items():
                self._cache.set(key, value, expire=expire)

    def add(self, key: str, value: bytes, *, expire: float | None = None) -> bool:
        return bool(self._cache.add(key, value, expire=expire))

    def delete(self, key: str) -> None:
        self._cache.delete(key)

    def close(self) -> None:
        self._cache.close()
