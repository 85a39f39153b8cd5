"""Jobs per second with 1, 2 and 4 worker processes on short real style jobs.

For each process count P, ``atelier worker --concurrency P`` (the real CLI: P prefork
children) takes bursts of jobs submitted at once through the real submit path;
throughput = jobs / (first submit → last terminal), the median of ``--repeat`` bursts.
Every run checks that each submitted job succeeded exactly once and that the queue is
empty afterwards. Each process runs torch on ``--threads`` threads (1 by default: on the
shared 2-core machine, two-thread kernels on 64 px jobs ran several times slower than one
thread once other processes competed for the cores; 0 keeps the CLI's cores/P).

``--devices cuda,cpu`` instead compares one GPU worker (``--gpus 0``) with one CPU worker
on the same jobs and records the GPU memory in use (nvidia-smi's peak while it ran);
benchmarks/gpu_throughput.sh drives that mode.

    python benchmarks/throughput.py [--processes 1,2,4] [--jobs 12] [--size 64]
    python benchmarks/throughput.py --devices cuda,cpu --jobs 20 --cpu-jobs 3 --size 512
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


class GpuMemoryPeak:
    """Polls nvidia-smi's used memory (MiB) of GPU 0 while a run goes on."""

    def __init__(self) -> None:
        self.peak: int | None = None
        self.total: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _read(self) -> tuple[int, int] | None:
        if not shutil.which("nvidia-smi"):
            return None
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=memory.used,memory.total",
                "--format=csv,noheader,nounits",
                "--id=0",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        used, total = (int(x) for x in out.strip().split(","))
        return used, total

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            reading = self._read()
            if reading is None:
                return
            self.peak = max(self.peak or 0, reading[0])
            self.total = reading[1]

    def __enter__(self) -> GpuMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(5)


def burst(settings, jobs: int, size: int, iterations: int | None, preset: str, seed0: int):
    """Submit ``jobs`` at once, wait for all; returns (ids, seconds, per-job run seconds)."""
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.models import Job
    from web import create_app

    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    started = time.monotonic()
    ids = []
    for i in range(jobs):
        form = harness.job_form(size, iterations, seed=seed0 + i, preset=preset)
        response = client.post("/api/v1/jobs", data=form)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    harness.wait_terminal(settings, ids, timeout=3600)
    elapsed = time.monotonic() - started
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(Job.started_at, Job.finished_at).where(Job.id.in_(ids)))
        runs = [(f - s).total_seconds() for s, f in rows if s and f]
    return ids, elapsed, runs


def run_config(settings, label: str, worker_argv: list[str], args, jobs: int, warm: int) -> dict:
    """One worker configuration: start it, warm it, time a burst, account for every job.

    ``warm`` jobs go first (not timed), so each prefork child has loaded the network.
    """
    log = settings.var_dir / f"worker-{label}.log"
    earlier = harness.existing_ids(settings)
    worker = harness.start_workers(settings, worker_argv, log, f"bench-{label}")
    try:
        warm_ids, _, _ = burst(settings, warm, args.size, args.iterations, args.preset, 10_000)
        ids, rates, runs = [], [], []
        with GpuMemoryPeak() as memory:
            for repeat in range(args.repeat):
                seed0 = 20_000 + 1000 * repeat
                got, elapsed, times = burst(
                    settings, jobs, args.size, args.iterations, args.preset, seed0
                )
                ids += got
                runs += times
                rates.append(jobs / elapsed)
    finally:
        harness.stop(worker, timeout=60)
    accounting = harness.account(settings, warm_ids + ids, earlier=earlier)
    queues = harness.queue_lengths(settings)
    accounting["ok"] = accounting["ok"] and queues["gpu"] == 0 and queues["unacked"] == 0
    failed_log = "" if accounting["ok"] else log.read_text()[-2000:]
    rate = statistics.median(rates)
    return {
        "label": label,
        "worker": worker_argv,
        "jobs": jobs,
        "repeats": args.repeat,
        "threads_per_process": settings_threads(),
        "jobs_per_s_each": [round(r, 4) for r in rates],
        "jobs_per_s": round(rate, 4),
        "jobs_per_min": round(60 * rate, 2),
        "job_run": harness.percentiles(runs),
        "gpu_memory_peak_mib": memory.peak,
        "gpu_memory_total_mib": memory.total,
        "queues_after": queues,
        "accounting": accounting,
        **({"worker_log_tail": failed_log} if failed_log else {}),
    }


def settings_threads() -> str:
    return os.environ.get("OMP_NUM_THREADS", "torch default (cores / concurrency)")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--devices", help="cuda,cpu: compare one GPU worker with one CPU worker")
    parser.add_argument("--jobs", type=int, default=8, help="jobs per burst")
    parser.add_argument("--repeat", type=int, default=3, help="bursts per configuration (median)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker process (0: the CLI's default, cores / concurrency)",
    )
    parser.add_argument("--cpu-jobs", type=int, help="with --devices: jobs on the CPU")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--name", default="throughput")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.iterations <= 0:
        args.iterations = None  # the preset's own count
    if args.threads > 0:  # children inherit it; the CLI leaves an operator's choice alone
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    results = []
    with harness.environment(args.db, device="auto") as settings:
        if args.devices:
            for device in args.devices.split(","):
                if device == "cuda" and not _cuda_available():
                    results.append({"label": "cuda", "skipped": "no CUDA device visible"})
                    continue
                argv_ = ["--gpus", "0"] if device == "cuda" else ["--concurrency", "1"]
                jobs = args.jobs if device == "cuda" else (args.cpu_jobs or args.jobs)
                print(f"{device}: {jobs} jobs at {args.size} px …", flush=True)
                on = dataclasses.replace(settings, device=device)
                argv_ += ["--queues", "gpu"]
                results.append(run_config(on, device, argv_, args, jobs, warm=1))
        else:
            for count in (int(p) for p in args.processes.split(",")):
                print(f"{count} worker process(es): {args.jobs} jobs …", flush=True)
                argv_ = ["--queues", "gpu", "--concurrency", str(count)]
                on = dataclasses.replace(settings, device="cpu")
                results.append(run_config(on, f"p{count}", argv_, args, args.jobs, warm=count))

    measured = [r for r in results if "jobs_per_s" in r]
    base = measured[0]["jobs_per_s"] if measured else None
    for r in measured:
        r["speedup_vs_first"] = round(r["jobs_per_s"] / base, 2)
    config = {k: v for k, v in vars(args).items() if k not in ("out",)}
    result = {"machine": harness.machine(), "config": config, "runs": results}
    path = harness.write_result(args.name, result, args.out)
    rows = [
        [
            r["label"],
            r["jobs"] * r["repeats"],
            r["jobs_per_s"],
            r["jobs_per_min"],
            r["speedup_vs_first"],
            r["gpu_memory_peak_mib"] or "-",
            r["accounting"]["lost"],
            r["accounting"]["duplicated"],
        ]
        for r in measured
    ]
    header = ["run", "jobs", "jobs/s", "jobs/min", "× first", "GPU MiB", "lost", "dup"]
    print(harness.table(rows, header))
    for r in results:
        if "skipped" in r:
            print(f"{r['label']}: skipped ({r['skipped']})")
    print(f"wrote {path}")
    return 0 if measured and all(r["accounting"]["ok"] for r in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
