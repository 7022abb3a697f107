"""How fast the host let a benchmark run: the steal time of a virtual machine, and a CPU probe.

On a shared virtual machine the hypervisor runs other guests on our CPUs, and Linux counts the
time a CPU of ours was ready but not given to us as *steal* (``/proc/stat``). On this project's
host the reward route's p99 has moved with it more than with the code in some A/Bs
(docs/benchmarks.md, "The rewards' own table"), though not run by run within an hour ("A CPU
probe beside the steal time"), so the web and speed benchmarks report it beside their timings.

Steal time is a partial reading: the reward route's p99 has been over 3 ms at 0.0% steal.
:func:`cpu_probe` reads the host's speed another way: a fixed piece of Python timed on the
servers' CPU the way a reward at 200/s meets it, after a few milliseconds of sleep. (A
process of ours copying large arrays on the other CPU did not move it; what it has shown so
far is in docs/benchmarks.md, "A CPU probe beside the steal time".)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.stats import percentile

PROC_STAT = Path("/proc/stat")
PROBE_SLEEP = 0.003  # s before each timed call: a request every few ms meets a CPU like this


@dataclass(frozen=True)
class CpuTicks:
    """The machine's summed CPU ticks since boot: all of them, and the stolen ones."""

    total: int
    steal: int


def parse_proc_stat(text: str) -> CpuTicks | None:
    """The ``cpu`` line of ``/proc/stat`` (user nice system idle iowait irq softirq steal
    guest guest_nice); ``None`` without one. Guest time is already counted in user and nice,
    so it is left out of the total."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(v) for v in fields[1:9]]
            return CpuTicks(total=sum(ticks), steal=ticks[7] if len(ticks) > 7 else 0)
    return None


def cpu_ticks() -> CpuTicks | None:
    """The ticks now, or ``None`` where ``/proc/stat`` is missing (not Linux)."""
    try:
        return parse_proc_stat(PROC_STAT.read_text())
    except OSError:
        return None


def steal_share(before: CpuTicks | None, after: CpuTicks | None) -> float | None:
    """The share of the CPU time between two readings that the host stole (0-1)."""
    if before is None or after is None or after.total <= before.total:
        return None
    return (after.steal - before.steal) / (after.total - before.total)


def percent(share: float | None) -> str:
    """``0.0123`` as ``"1.2%"``; ``"n/a"`` when not measured."""
    return "n/a" if share is None else f"{100 * share:.1f}%"


def probe_work(n: int = 300) -> int:
    """The probe's fixed work: integer arithmetic, a dict and a list (54 us back to back on
    this project's host in a quiet hour, 86 us at the median after the probe's sleep)."""
    table: dict[int, int] = {}
    items: list[int] = []
    total = 0
    for i in range(n):
        total += (i * 7919) % 13
        table[i & 63] = total
        items.append(total)
    return total + len(table) + items[-1]


def cpu_probe(cpus: Collection[int] | None = None, calls: int = 300,
              work: Callable[[], object] = probe_work,
              sleep: Callable[[float], None] = time.sleep) -> dict[str, float]:
    """Median and 99th percentile (``p50``, ``p99``, microseconds) of ``work`` timed ``calls``
    times, each after a :data:`PROBE_SLEEP` sleep, on ``cpus`` (the calling thread is moved
    there for the probe and back afterwards; where affinity cannot be set, where it runs).

    A probe slower than usual means a slower host, whatever the steal time says; a usual one
    does not mean a fast host (its data fits in the first-level cache, a page's does not:
    docs/benchmarks.md, "Run M"). About ``calls`` x 3 ms.
    """
    pin = bool(cpus) and hasattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0) if pin else None
    if pin:
        os.sched_setaffinity(0, set(cpus or ()))
    try:
        times: list[float] = []
        for _ in range(calls):
            sleep(PROBE_SLEEP)
            start = time.perf_counter()
            work()
            times.append((time.perf_counter() - start) * 1e6)
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
    times.sort()
    return {"p50": percentile(times, 50), "p99": percentile(times, 99)}


CPUINFO = Path("/proc/cpuinfo")
SGEMM_SHAPE = (1000, 256, 128)  # the first hidden layer's product when ranking 1,000 actions


def cpu_model(text: str | None = None) -> str | None:
    """The CPU's model name (``/proc/cpuinfo``), or ``None`` where there is none."""
    if text is None:
        try:
            text = CPUINFO.read_text()
        except OSError:
            return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return None


def blas_probe(calls: int = 20) -> dict[str, Any]:
    """numpy's BLAS (library, version, the kernel set it chose for this CPU) and the median
    time of one float32 ``(1000 x 256) @ (256 x 128)`` product on one BLAS thread: most of a
    rank of 1,000 actions, so rank timings of two hosts compare.

    ``sgemm_1000x256x128_ms`` is timed as the engine runs it, after
    :func:`ef_middleware.blas.warm`; ``..._unwarmed_ms`` before it, when this process had not
    warmed yet (else ``None``). On the host of 2026-12-04 the two were 2.1 and 7.1 ms
    (docs/benchmarks.md, "Speed").
    """
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    from ef_middleware import blas

    libraries = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    found = [i for i in libraries if "numpy" in str(i.get("filepath", ""))] or libraries
    info: dict[str, Any] = {key: found[0].get(key) for key in
                            ("internal_api", "version", "architecture")} if found else {}
    rows, inner, cols = SGEMM_SHAPE
    rng = np.random.default_rng(0)
    a = rng.random((rows, inner), dtype=np.float32)
    b = rng.random((inner, cols), dtype=np.float32)

    def median_ms() -> float:
        times: list[float] = []
        with threadpool_limits(1, user_api="blas"):
            for _ in range(calls):
                start = time.perf_counter()
                a @ b
                times.append((time.perf_counter() - start) * 1000)
        return round(percentile(sorted(times), 50), 3)

    info["sgemm_1000x256x128_unwarmed_ms"] = None if blas.warmed() else median_ms()
    blas.warm()
    info["sgemm_1000x256x128_ms"] = median_ms()
    return info


def process_memory(pid: int) -> dict[str, float] | None:
    """Process ``pid``'s resident memory now and at its peak (``VmRSS``, ``VmHWM`` of
    ``/proc/<pid>/status``, in MB), read from outside so any process can be measured;
    ``None`` where there is no such file (not Linux, or the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return parse_memory(text)


def parse_memory(text: str) -> dict[str, float] | None:
    """``{"rss": MB, "peak": MB}`` from the text of a ``/proc/<pid>/status`` file."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            number, _, unit = value.strip().partition(" ")
            if unit != "kB" or not number.isdigit():
                return None
            found["rss" if name == "VmRSS" else "peak"] = int(number) / 1024
    return found if len(found) == 2 else None
