"""How much of the CPU the host took while a benchmark ran: the steal time of a virtual machine.

On a shared virtual machine the hypervisor runs other guests on our CPUs, and Linux counts the
time a CPU of ours was ready but not given to us as *steal* (``/proc/stat``). On this project's
host the reward route's p99 follows it more than it follows the code (docs/benchmarks.md, "The
rewards' own table"), so the web and speed benchmarks report it beside their timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")


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
