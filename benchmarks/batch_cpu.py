"""Batched against sequential style jobs through the engine (no queue): jobs/s per batch.

For each batch size B, ``--jobs`` style jobs (each with its own pictures and seed, all
with one scale plan) run as calls of ``stylize_batch`` with B jobs each; B = 1 is
``stylize``, one job after another.  The claim is the ratio to B = 1 measured in the same
run (median of ``--repeat``), never an absolute time.  With ``--processes N`` (jobs per
device) N spawned processes, each with its own network (and CUDA context on a GPU), share
the jobs.  Every batched job's final content and style losses are compared with its
sequential run (same seed): the largest relative difference is reported beside the speed.

    python benchmarks/batch_cpu.py                                      # CPU, 64 px
    python benchmarks/batch_cpu.py --device cuda --size 512 --batches 1,2,4,8 --processes 1,2

benchmarks/gpu_throughput.sh runs the second form when a GPU is present.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def _items(indices: list[int], args: argparse.Namespace) -> list:
    """The jobs with these indices: pictures and seeds made here, one scale plan."""
    from PIL import Image

    from worker.engines.batch_style import BatchItem
    from worker.engines.style_transfer import StyleParams

    items = []
    for index in indices:
        seed = 1000 + index
        content = Image.open(io.BytesIO(harness.sample_png(args.size, args.size * 3 // 4, seed)))
        side = max(32, args.size // 2)
        style = Image.open(io.BytesIO(harness.sample_png(side, side, seed + 7)))
        params = StyleParams.resolve(
            1,
            size=args.size,
            preset=args.preset,
            iterations=args.iterations or None,
            seed=seed,
            device=args.device,
        )
        items.append(BatchItem(content.convert("RGB"), [style.convert("RGB")], params))
    return items


def _run_share(task: tuple[list[int], int, argparse.Namespace]) -> dict[int, dict]:
    """Run the jobs ``indices`` in batches of ``batch``; each job's final losses."""
    from worker.engines import style_targets
    from worker.engines.batch_style import stylize_batch

    indices, batch, args = task
    style_targets.clear()  # every configuration computes its style targets afresh
    items = _items(indices, args)
    losses = {}
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        outcomes = stylize_batch(chunk, precision=args.precision, max_batch=batch)
        for index, outcome in zip(indices[start : start + batch], outcomes, strict=True):
            if isinstance(outcome, Exception):
                raise outcome
            losses[index] = outcome.metrics["losses"]
    return losses


def _init(barrier, threads: int, device: str) -> None:
    """A spawned process: its share of the cores, the network loaded, then wait for all."""
    import torch

    from worker.engines.weights import load_vgg19

    if threads:
        torch.set_num_threads(threads)
    load_vgg19("original", "max", torch.device(device))
    barrier.wait()


def _noop(_: int) -> None:
    return None


def measure(args: argparse.Namespace, processes: int, batch: int) -> tuple[float, dict]:
    """Seconds for all ``--jobs`` jobs with ``processes`` processes and batch ``batch``."""
    shares = [list(range(p, args.jobs, processes)) for p in range(processes)]
    if processes == 1:
        started = time.perf_counter()
        losses = _run_share((shares[0], batch, args))
        return time.perf_counter() - started, losses
    context = multiprocessing.get_context("spawn")
    threads = max(1, args.threads // processes) if args.device == "cpu" else 0
    barrier = context.Manager().Barrier(processes)
    with context.Pool(
        processes, initializer=_init, initargs=(barrier, threads, args.device)
    ) as pool:
        pool.map(_noop, range(processes), chunksize=1)  # returns once every process is warm
        started = time.perf_counter()
        parts = pool.map(_run_share, [(s, batch, args) for s in shares], chunksize=1)
        seconds = time.perf_counter() - started
    return seconds, {k: v for part in parts for k, v in part.items()}


def _largest_difference(losses: dict, reference: dict) -> float:
    return max(
        abs(losses[i][term] / reference[i][term] - 1)
        for i in reference
        for term in ("content", "style")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--iterations", type=int, default=10, help="0: the preset's own")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--batches", default="1,2,4", help="batch sizes; 1 must come first")
    parser.add_argument("--processes", default="1", help="jobs per device (processes)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--name", default="batch_cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if batches[0] != 1:
        parser.error("--batches must start with 1: the sequential run every ratio is against")

    import torch

    args.threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    _run_share(([0], 1, args))  # warm: network loaded, first-call costs paid

    runs, reference, sequential = [], None, None
    for processes in (int(p) for p in args.processes.split(",")):
        for batch in batches:
            print(f"{processes} process(es), batch {batch}: {args.jobs} jobs …", flush=True)
            timed = [measure(args, processes, batch) for _ in range(args.repeat)]
            seconds = statistics.median(t for t, _ in timed)
            losses = timed[0][1]
            if reference is None:
                reference, sequential = losses, seconds
            runs.append(
                {
                    "jobs_per_device": processes,
                    "batch_size": batch,
                    # each process has jobs / processes jobs: no batch is larger than that
                    "effective_batch_size": min(batch, -(-args.jobs // processes)),
                    "jobs": args.jobs,
                    "seconds_each": [round(t, 3) for t, _ in timed],
                    "seconds": round(seconds, 3),
                    "jobs_per_hour": round(3600 * args.jobs / seconds, 1),
                    "speedup_vs_sequential": round(sequential / seconds, 3),
                    "max_loss_difference_vs_sequential": _largest_difference(losses, reference),
                }
            )
    config = {k: v for k, v in vars(args).items() if k != "out"}
    result = {"machine": harness.machine(), "config": config, "runs": runs}
    path = harness.write_result(args.name, result, args.out)
    header = ["jobs/device", "batch", "jobs", "s", "jobs/hour", "× sequential", "max Δloss"]
    rows = [
        [
            r["jobs_per_device"],
            r["batch_size"],
            r["jobs"],
            r["seconds"],
            r["jobs_per_hour"],
            r["speedup_vs_sequential"],
            f"{r['max_loss_difference_vs_sequential']:.1e}",
        ]
        for r in runs
    ]
    print(harness.table(rows, header))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
