"""How many cores other processes leave free, so CPU jobs pick their intra-op threads.

A VGG step is made of many short ops, each ending in an OpenMP barrier that waits for
every intra-op thread.  When another process keeps a core busy, one of our threads is
descheduled at every barrier and the whole step waits for it.  Measured on a 2-core VM
with one other busy process, a 256 px job took 128 s on two threads and 76 s on one
(44 s on two idle cores).  So each scale runs on the cores the others left free during
the previous one.

The measure is CPU time, not the run queue: ``/proc/stat`` gives the busy time of the
cores we may run on, ``time.process_time()`` our own (spinning OpenMP threads included),
and the difference over the wall time is the cores the others used.  The run queue of
``/proc/loadavg`` is one instant's count, and the earlier rule built on it (give up
threads only when every core is taken) missed the one-neighbour case above entirely.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

MIN_WINDOW_S = 0.2  # /proc/stat counts in 10 ms ticks: shorter windows are mostly noise
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    """One reading: wall clock, busy CPU seconds of our usable cores, this process's own."""

    wall: float
    busy: float
    own: float


def usable_cores() -> list[int]:
    """The CPUs this process may run on (a cpuset or ``taskset`` narrows them)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _busy_seconds(lines: list[str], cpus: set[int]) -> float | None:
    """Busy CPU seconds of the ``cpuN`` lines of /proc/stat whose N is in ``cpus``."""
    ticks, seen = 0, 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
        ticks += user + nice + system + irq + softirq
        seen += 1
    return ticks / _CLOCK_TICKS if seen else None


def sample() -> CpuSample | None:
    """Read the counters of the cores we may run on, now; None without /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            lines = [line for line in fh if line.startswith("cpu")]
    except OSError:
        return None
    busy = _busy_seconds(lines, set(usable_cores()))
    if busy is None:
        return None
    return CpuSample(wall=time.monotonic(), busy=busy, own=time.process_time())


def others_cores(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """Cores other processes kept busy between two samples; None if unknown or too short."""
    if before is None or after is None:
        return None
    wall = after.wall - before.wall
    if wall < MIN_WINDOW_S:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others / wall)


def free_threads(configured: int, others: float | None, cores: int | None = None) -> int:
    """Intra-op threads for the next stretch of work: never more than ``configured``.

    The cores the others used are rounded to the nearest whole core, so a neighbour at
    half a core or less does not halve our threads.
    """
    if others is None:
        return configured
    total = cores if cores is not None else len(usable_cores())
    return max(1, min(configured, math.floor(total - others + 0.5)))


class CoreShare:
    """Cores the other processes used since the previous call, measured call to call."""

    def __init__(self) -> None:
        self._last = sample()

    def others(self) -> float | None:
        now = sample()
        used = others_cores(self._last, now)
        if used is not None or now is None:
            self._last = now
        return used
