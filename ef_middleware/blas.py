"""numpy's BLAS for the engine: one thread, set after one product on two.

The model's matrices are small, so the engine runs BLAS on one thread (docs/design.md,
"Threads"). On one host, OpenBLAS (numpy's wheels, 0.3.31) ran float32 products with an inner
dimension of 256 or more about 3.4 times slower on one thread for as long as the process had
never run a product on its threads: ``(1000 x 256) @ (256 x 128)``, most of a rank of 1,000
actions, took 7.2 ms, and 2.1 ms on the same single thread after one threaded product, with or
without ``OPENBLAS_NUM_THREADS=1`` (a first-generation EPYC, 2026-12-04; docs/benchmarks.md,
"Speed"). So before limiting the threads, :func:`limit_threads` runs one product of
``WARM_SIZE`` on two threads, once per process: about a millisecond, and no effect where
OpenBLAS has no such slow path.
"""

from __future__ import annotations

import threading

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["WARM_SIZE", "limit_threads", "warm", "warmed"]

WARM_SIZE = 256  # a square product this large runs on OpenBLAS's threads (a tiny one does not)
_lock = threading.Lock()
_warmed: list[bool] = []  # set once the warm-up product has run in this process


def warm() -> bool:
    """Run one float32 product on two BLAS threads, the first time only; return whether this
    call ran it."""
    with _lock:
        if _warmed:
            return False
        with threadpool_limits(2, user_api="blas"):  # the limits before are restored after
            square = np.ones((WARM_SIZE, WARM_SIZE), dtype=np.float32)
            square @ square
        _warmed.append(True)
        return True


def warmed() -> bool:
    """Whether :func:`warm` has run in this process."""
    return bool(_warmed)


def limit_threads(threads: int) -> None:
    """Limit every BLAS library of the process to ``threads`` (threadpoolctl), after
    :func:`warm`."""
    warm()
    threadpool_limits(threads, user_api="blas")
