"""Optional tqdm progress on stderr; silent when tqdm is missing or progress is off."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Callable that advances a progress bar by ``n`` steps."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled and total > 0:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(
                total=total, desc=desc, file=sys.stderr, unit="step", mininterval=1.0, leave=False
            )

    @classmethod
    def null(cls) -> Progress:
        return cls(0, "", enabled=False)

    def __call__(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
