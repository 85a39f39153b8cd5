"""What resuming from a checkpoint saves a style job that loses its worker part-way.

Usage: python benchmarks/resume_savings.py [--size 384] [--stop-at 0.6 0.9]

Runs one default-preset style job on the CPU through the engine three ways, in this
process with one thread (so the resumed image can be compared bit for bit): once
uninterrupted; then, for each stop point, stopped after that share of its steps (what a
killed or drained worker leaves behind: the newest checkpoint, at a scale boundary or
``checkpoint_seconds`` inside a scale) and continued from its newest checkpoint. A job
that restarts instead repeats everything it had done; one that resumes repeats only what
came after its last checkpoint. Writes ``benchmarks/results/resume_savings.json``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine, sample_png, table, write_result  # noqa: E402


class Stop(Exception):
    """Raised from the progress callback: the worker went away."""


def run(
    content,
    style,
    params,
    *,
    stop_at: int | None = None,
    checkpoint: bytes | None = None,
    checkpoint_seconds: float,
) -> tuple[Any, list[bytes], float]:
    """(result or None when stopped, checkpoints handed out, seconds)."""
    from worker.engines.errors import Canceled
    from worker.engines.style_transfer import stylize

    class Stopped(Canceled):
        pass

    saved: list[bytes] = []

    def on_progress(progress) -> None:
        if stop_at is not None and progress.step >= stop_at:
            raise Stopped("the worker went away")

    started = time.perf_counter()
    try:
        result = stylize(
            content,
            [style],
            params,
            on_progress=on_progress,
            checkpoint=checkpoint,
            on_checkpoint=saved.append,
            checkpoint_seconds=checkpoint_seconds,
        )
    except Stopped:
        result = None
    return result, saved, time.perf_counter() - started


def main() -> None:
    import torch
    from PIL import Image

    from worker.engines.params import StyleParams

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--stop-at", type=float, nargs="+", default=[0.6, 0.9])
    parser.add_argument("--checkpoint-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    content = Image.open(io.BytesIO(sample_png(640, 480, 1))).convert("RGB")
    style = Image.open(io.BytesIO(sample_png(400, 400, 2))).convert("RGB")
    params = StyleParams.resolve(1, size=args.size, seed=7, device="cpu")
    kwargs = {"checkpoint_seconds": args.checkpoint_seconds}
    run(content, style, StyleParams.resolve(1, size=64, seed=1, device="cpu"), **kwargs)  # warm
    whole, _, whole_seconds = run(content, style, params, **kwargs)
    total = whole.metrics["iterations"] if "iterations" in whole.metrics else None
    total = total or sum(scale["steps"] for scale in whole.metrics["scales"])
    rows, runs = [], []
    for share in args.stop_at:
        stop = max(1, round(total * share))
        _, saved, before = run(content, style, params, stop_at=stop, **kwargs)
        resumed, _, after = run(content, style, params, checkpoint=saved[-1], **kwargs)
        same = resumed.image.tobytes() == whole.image.tobytes()
        entry = {
            "stopped_after_step": stop,
            "of_steps": total,
            "seconds_before_the_stop": round(before, 2),
            "checkpoints_written": len(saved),
            "resumed_from": resumed.metrics["checkpoints"]["resumed_from"],
            "seconds_to_finish_resumed": round(after, 2),
            "seconds_to_finish_restarted": round(whole_seconds, 2),
            "seconds_saved": round(whole_seconds - after, 2),
            "share_of_elapsed_work_kept": round((whole_seconds - after) / before, 3),
            "same_image_as_uninterrupted": same,
        }
        runs.append(entry)
        rows.append(
            [
                f"{share:.0%}",
                entry["seconds_before_the_stop"],
                entry["seconds_to_finish_resumed"],
                entry["seconds_to_finish_restarted"],
                entry["share_of_elapsed_work_kept"],
                same,
            ]
        )
    print(
        table(
            rows,
            ["stopped at", "s before", "s resumed", "s restarted", "work kept", "same image"],
        )
    )
    result = {
        "machine": {**machine(), "threads": 1},
        "size": args.size,
        "preset": params.preset,
        "checkpoint_seconds": args.checkpoint_seconds,
        "uninterrupted_seconds": round(whole_seconds, 2),
        "runs": runs,
    }
    print("written to", write_result("resume_savings", result, args.out))


if __name__ == "__main__":
    main()
