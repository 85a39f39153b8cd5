"""Checks one archive with SafeArchive in a process of its own and prints what that cost.

Usage: ``python archive_probe.py ARCHIVE`` prints one JSON object: whether it was refused
(with the InputError's field, status and message, or the name of any other exception),
the CPU seconds of the check, and how far the peak resident memory grew during it.

A subprocess, because peak memory (``ru_maxrss``) is a high-water mark: in pytest's own
process an earlier test may have set it higher than anything this check does. CPU time
rather than wall time, because the machine is shared and its wall clock is noisy. The
upload is read before measuring: the web process holds it already when it checks it.
A parser that regresses is stopped by resource limits rather than waited on.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

CPU_LIMIT_S = 10
MEMORY_LIMIT = 2 * 1024**3  # address space: a regressed parser gets MemoryError, not swap


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def probe(path: Path) -> dict:
    """Runs SafeArchive on the file's bytes; the outcome with its CPU time and memory growth."""
    from shared.archives import SafeArchive
    from shared.errors import InputError

    data = path.read_bytes()
    peak, start = _peak_mib(), time.process_time()
    try:
        archive = SafeArchive(data)
        outcome: dict = {"refused": False, "members": len(archive.members)}
    except InputError as exc:
        outcome = {"refused": True, "field": exc.field, "status": exc.status}
        outcome["message"] = exc.message[:300]
    except Exception as exc:  # any other failure is reported, for the test to show
        outcome = {"refused": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    outcome["cpu_s"] = round(time.process_time() - start, 3)
    outcome["rss_growth_mib"] = round(_peak_mib() - peak, 1)
    return outcome


def main() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S + 5))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    print(json.dumps(probe(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
