"""Background threads run at a lower CPU priority than the request path."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

__all__ = ["BACKGROUND_NICE", "lower_priority", "yield_to_requests"]

log = logging.getLogger("ef_middleware")
BACKGROUND_NICE = 19  # the default: background work yields the core to any request


def lower_priority(nice: int) -> bool:
    """Lower the calling thread's CPU priority by ``nice`` steps (at most to 19); True if done.

    Background work (training, logging, embedding) shares the machine with the request path.
    At normal priority the kernel lets it run its time slice while a request waits for the
    core; at a lower one, a request that becomes runnable preempts it. Measured with the web
    benchmark's reward route, server and client on separate cores: in-server p99 2.5-3.8 ms
    at normal priority, 0.9-4.5 (median 1.3) at nice 19 (docs/benchmarks.md). Linux sets
    the nice value per thread; elsewhere this does nothing.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except (OSError, AttributeError) as exc:  # a sandbox that forbids it: run as we are
        log.debug("ef_middleware: could not lower the priority of %s: %s",
                  threading.current_thread().name, exc)
        return False
    return True


def yield_to_requests() -> None:
    """Let other threads (a web server's event loop) take the interpreter lock now.

    The learner shares the process with the request path. When both want the lock, CPython
    hands it over only every ``sys.getswitchinterval()`` (5 ms), so a learner busy in Python
    code could hold a page or a reward for up to 5 ms. Sleeping 0 s releases the lock at
    once; the learner calls this between steps and between chunks of work.
    """
    time.sleep(0)
