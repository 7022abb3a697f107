"""Counting a process's open file descriptors (Linux's /proc), for tests of what is closed."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def open_under(folder: Path) -> int:
    """How many of this process's descriptors point into ``folder``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
    return count
