"""Queue overhead: from the job row's commit to ``starting`` on a warm, idle worker.

One real worker (``atelier worker``), one real Redis, a real database; jobs go in one at
a time through the real submit path (validation, storage, commit, publish) and each runs
to the end before the next, so the worker is idle and warm when a job arrives.

commit→starting = ``started_at`` (the worker's claim) − ``created_at`` (set just before
the INSERT is committed), both from the same machine's clock: an upper bound that
includes the INSERT and COMMIT themselves.

    python benchmarks/queue_overhead.py [--jobs 40] [--db postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def measure(settings, jobs: int, pause: float) -> tuple[list[str], list[float], list[float]]:
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.models import Job
    from web import create_app

    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    ids, overhead, run = [], [], []
    for i in range(jobs + 1):  # the first one warms the worker child and is not counted
        response = client.post("/api/v1/jobs", data=harness.job_form(32, 1, seed=i))
        assert response.status_code == 202, response.get_json()
        job_id = response.get_json()["id"]
        ids.append(job_id)
        harness.wait_terminal(settings, [job_id], timeout=120)
        with session_scope(settings.database_url) as session:
            job = session.scalar(select(Job).where(Job.id == job_id))
            if i:
                overhead.append((job.started_at - job.created_at).total_seconds())
                run.append((job.finished_at - job.started_at).total_seconds())
        time.sleep(pause)  # let the worker ack and go back to waiting on Redis
    return ids, overhead, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--pause", type=float, default=0.2, help="idle time between jobs (s)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    with harness.environment(args.db, device="cpu") as settings:
        settings = dataclasses.replace(settings, progress_interval=1.0)
        worker = harness.start_workers(
            settings, ["--queues", "gpu"], settings.var_dir / "worker.log", "bench-queue"
        )
        try:
            ids, overhead, run = measure(settings, args.jobs, args.pause)
        finally:
            harness.stop(worker)
        accounting = harness.account(settings, ids)
        queues = harness.queue_lengths(settings)

    result = {
        "machine": harness.machine(),
        "config": {"jobs": args.jobs, "db": args.db, "pause_s": args.pause, "job": "32 px, 1 step"},
        "commit_to_starting": harness.percentiles(overhead),
        "starting_to_terminal": harness.percentiles(run),
        "target": {"commit_to_starting_p50_ms": 50},
        "queues_after": queues,
        "accounting": accounting,
    }
    path = harness.write_result("queue_overhead", result, args.out)
    o = result["commit_to_starting"]
    print(
        harness.table(
            [["commit→starting", o["n"], o["p50_ms"], o["p90_ms"], o["p99_ms"], o["max_ms"]]],
            ["what", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        )
    )
    print(f"lost {accounting['lost']}, duplicated {accounting['duplicated']}; wrote {path}")
    return 0 if accounting["ok"] and queues["gpu"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
