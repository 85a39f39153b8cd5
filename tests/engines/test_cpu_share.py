"""The free-core measure behind the CPU engine's intra-op threads, against real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from worker.engines import cpu_share
from worker.engines.cpu_share import CpuSample, free_threads, others_cores

pytestmark = pytest.mark.skipif(cpu_share.sample() is None, reason="needs Linux /proc/stat")


@pytest.mark.parametrize(
    ("configured", "others", "cores", "expected"),
    [
        (2, None, 2, 2),  # unknown: keep what was configured
        (2, 0.0, 2, 2),
        (2, 0.4, 2, 2),  # a light neighbour does not halve the threads
        (2, 0.7, 2, 1),
        (2, 1.9, 2, 1),  # never below one
        (2, 0.0, 16, 2),  # never above the configured count
        (8, 3.0, 8, 5),
    ],
)
def test_free_threads(configured, others, cores, expected):
    assert free_threads(configured, others, cores) == expected


def test_short_or_missing_windows_are_unknown():
    a = CpuSample(wall=10.0, busy=100.0, own=5.0)
    assert others_cores(a, CpuSample(wall=10.05, busy=100.1, own=5.0)) is None
    assert others_cores(None, a) is None and others_cores(a, None) is None
    assert others_cores(a, CpuSample(wall=12.0, busy=103.0, own=6.0)) == pytest.approx(1.0)


def test_a_busy_neighbour_process_is_counted():
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        before = cpu_share.sample()
        time.sleep(1.0)
        used = others_cores(before, cpu_share.sample())
    finally:
        burner.kill()
        burner.wait()
    assert used is not None and used >= 0.6


def test_our_own_busy_time_is_taken_out():
    """Holds beside any neighbours: what we spin shows in /proc/stat and is subtracted."""
    before = cpu_share.sample()
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:  # this process spins on one core
        pass
    after = cpu_share.sample()
    assert before is not None and after is not None
    wall = after.wall - before.wall
    everyone = (after.busy - before.busy) / wall
    ours = (after.own - before.own) / wall
    assert ours >= 0.4  # we did get a core for most of the time
    assert everyone >= ours - 0.15  # and the machine's count saw it, in the same units
    assert others_cores(before, after) == pytest.approx(max(0.0, everyone - ours))


def test_only_the_cores_we_may_run_on_count():
    lines = [
        "cpu  900 0 300 5000 0 0 0 0 0 0",
        "cpu0 100 0 50 2000 0 0 0 0 0 0",
        "cpu1 800 0 250 3000 0 0 0 0 0 0",
    ]
    ticks = os.sysconf("SC_CLK_TCK")
    assert cpu_share._busy_seconds(lines, {0}) == pytest.approx(150 / ticks)
    assert cpu_share._busy_seconds(lines, {0, 1}) == pytest.approx(1200 / ticks)
    assert cpu_share._busy_seconds(lines, {7}) is None
    assert cpu_share.usable_cores()
