"""Runs one job row from claim to terminal state. Celery-free, so tests can call it directly.

claim (queued→starting, returns the fence) → load inputs → processing → engine with
progress → store outputs under the attempt's prefix → succeeded; every exit path ends
in exactly one terminal state or, when the job was taken elsewhere (Superseded), touches
nothing more and deletes this attempt's files; a drain that ran out hands it back.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared import states
from shared.db import session_scope
from shared.errors import InputError
from shared.images import load_rgb
from shared.jobs import attempt_prefix
from shared.models import Job
from shared.settings import Settings, get_settings
from shared.storage import Storage, job_key, open_storage
from shared.timeutil import utcnow
from worker import webhooks
from worker.engines.errors import Canceled, EngineError, InvalidInput
from worker.finetune_runner import run_fine_tune, run_predict
from worker.progress import (
    Drained,
    Heartbeat,
    ProgressReporter,
    mark_processing,
    record_outputs,
    save_preview,
    save_thumbnail,
    store_output,
)

log = logging.getLogger(__name__)

OUTPUT_ROLES = frozenset({"result", "preview", "thumbnail"})
OUTPUT_TYPES = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}
ENGINE_PARAMS = (
    "size", "iterations", "preset", "strength", "style_weights", "content_weight",
    "style_weight", "tv_weight", "optimizer", "init", "pooling", "preserve_color",
    "style_scale", "multiscale", "seed", "weights", "content_layer", "style_layers",
    "style_layer_weights",
)  # fmt: skip


def preload() -> None:
    """Warm the default network in a fresh worker child."""
    import torch

    from worker.engines.weights import load_vgg19, weights_identity

    device = get_settings().device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    load_vgg19("original", "max", device)
    weights_identity("original")


def run_job(job_id: str, *, worker: str, settings: Settings | None = None) -> str | None:
    """Run the job if this worker wins the claim; returns its final status.

    None: not ours (another worker has it, or took it over from this one: Superseded);
    ``queued``: handed back because the worker's shutdown drain ran out. Only the call
    whose own fenced transition ended the job sends the ``completed`` webhook, so a job
    sends it once however many workers touched it.
    """
    settings = settings or get_settings()
    with session_scope(settings.database_url) as session:
        fence = states.claim(session, job_id, worker)
    if fence is None:
        log.info("job %s not claimable (already taken, canceled or unknown)", job_id)
        return None
    storage = open_storage(settings.storage_url, settings)
    try:
        status = _run_claimed(fence, settings, storage)
    except states.Superseded:
        log.warning(
            "job %s attempt %d was taken over (requeued, canceled or ended elsewhere); "
            "this worker stops it and discards its files",
            job_id,
            fence.attempt,
        )
        if not _ended_on_this_attempt(settings, fence):
            _discard(storage, fence)
        return None
    except Drained:
        return _hand_back(settings, storage, fence)
    _discard_earlier_attempts(storage, fence)
    webhooks.notify(settings, job_id, "completed")
    return status


def _run_claimed(fence: states.Fence, settings: Settings, storage: Storage) -> str:
    """Inputs → engine → outputs → the terminal state, for a claimed job.

    Every failure becomes a terminal state through a fenced transition, which raises
    Superseded when another attempt owns the job by then (as do the writes on the way).
    """
    job_id, worker = fence.job_id, fence.worker
    kind, oom = None, False
    try:
        with session_scope(settings.database_url) as session:
            job = session.get(Job, job_id)
            kind, params = job.kind, dict(job.params)
            inputs = [(f.role, f.name) for f in job.files if f.role not in OUTPUT_ROLES]
        run = KIND_RUNNERS[kind]
        with Heartbeat(settings, fence):
            metrics = run(fence, params, inputs, settings, storage)
        status = _finish(settings, fence, metrics)
    except (states.Superseded, Drained):
        raise
    except Canceled:
        status = _end(settings, fence, states.CANCELED)
    except EngineError as exc:
        status = _fail(settings, fence, exc.code, str(exc))
    except (MemoryError, RuntimeError) as exc:
        oom = is_allocation_failure(exc)
        status = (
            _out_of_memory(settings, fence, kind, exc)
            if oom
            else _internal(settings, fence, worker, exc)
        )
    except SoftTimeLimitExceeded:
        status = _fail(
            settings,
            fence,
            "timeout",
            f"the job ran past the {settings.soft_time_limit} s limit; "
            "lower size or iterations, or raise ATELIER_SOFT_TIME_LIMIT",
        )
    except Exception as exc:
        status = _internal(settings, fence, worker, exc)
    if oom:
        release_memory()  # here, once the except clause has dropped the traceback's tensors
    return status


def _discard(storage: Storage, fence: states.Fence) -> None:
    """Delete this attempt's files, best effort: they are no job's outputs (the orphaned
    rest goes with the job's folder when the job is deleted or expires)."""
    try:
        storage.delete_prefix(attempt_prefix(fence.job_id, fence.attempt))
    except Exception:
        log.warning("could not delete the files of job %s attempt %d", fence.job_id,
                    fence.attempt, exc_info=True)  # fmt: skip


def _ended_on_this_attempt(settings: Settings, fence: states.Fence) -> bool:
    """Whether the job ended while it was still this attempt's (the dispatcher failed it
    past its attempts): then its file rows point at this attempt's files (the last
    preview) and they stay. On any doubt (the database unreachable) they stay too."""
    try:
        with session_scope(settings.database_url) as session:
            job = session.get(Job, fence.job_id)
            return job is not None and (job.status, job.worker, job.attempts) in {
                (status, fence.worker, fence.attempt) for status in states.TERMINAL
            }
    except Exception:
        log.warning("could not read job %s; keeping its files", fence.job_id, exc_info=True)
        return True


def _discard_earlier_attempts(storage: Storage, fence: states.Fence) -> None:
    """Once this attempt ended the job, earlier attempts' leftovers (a worker killed
    mid-job deletes nothing) go too; best effort."""
    for attempt in range(1, fence.attempt):
        _discard(storage, states.Fence(fence.job_id, fence.worker, attempt))


def _hand_back(settings: Settings, storage: Storage, fence: states.Fence) -> str | None:
    """The drain ran out: the job goes back to the queue, not counted as an attempt.

    Files first: the next claim reuses the attempt number, and so its prefix.
    """
    _discard(storage, fence)
    with session_scope(settings.database_url) as session:
        moved = states.hand_back(session, fence)
    if not moved:
        log.warning("job %s attempt %d was taken over before it could be handed back",
                    fence.job_id, fence.attempt)  # fmt: skip
        return None
    log.warning("job %s handed back to the queue: the worker is shutting down", fence.job_id)
    return states.QUEUED


def _internal(settings: Settings, fence: states.Fence, worker: str, exc: BaseException) -> str:
    log.exception("job %s failed", fence.job_id)
    return _fail(
        settings,
        fence,
        "internal",
        f"internal error ({type(exc).__name__}: {exc}); the worker {worker} log has the "
        "traceback — please report it",
    )


# What PyTorch's allocators say when an allocation fails (CPU: c10's DefaultCPUAllocator;
# CUDA and other devices raise torch.OutOfMemoryError, a RuntimeError, or say so).
ALLOCATION_FAILURES = ("out of memory", "can't allocate memory", "cannot allocate memory")
OUT_OF_MEMORY_HINTS = {
    "style_transfer": "choose a smaller size, fewer style images or a smaller style_scale",
    "fine_tune": "choose a smaller image_size or batch_size, or a smaller backbone",
    "predict": "send fewer or smaller images per job",
}


def is_allocation_failure(exc: BaseException) -> bool:
    """True for a failed memory allocation: MemoryError or a PyTorch out-of-memory error.

    Matched by name and message, so the web-free runner need not import torch to tell;
    any other RuntimeError is a bug and stays ``internal``.
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in ALLOCATION_FAILURES)


def out_of_memory_message(kind: str | None, exc: BaseException) -> str:
    """What ran out and what to change, for ``job.error.message``."""
    lines = str(exc).strip().splitlines()
    detail = lines[0].split("DefaultCPUAllocator: ")[-1][:300] if lines else type(exc).__name__
    hint = OUT_OF_MEMORY_HINTS.get(kind or "", "make the job smaller")
    return (
        f"the worker ran out of memory running this job ({detail}); {hint}, or retry when "
        "the worker is less busy"
    )


def _out_of_memory(
    settings: Settings, fence: states.Fence, kind: str | None, exc: BaseException
) -> str:
    """End the job ``out_of_memory``; the worker process itself carries on with the next."""
    log.warning("job %s ran out of memory", fence.job_id, exc_info=exc)
    traceback.clear_frames(exc.__traceback__)  # drop the job's tensors before writing
    return _fail(settings, fence, "out_of_memory", out_of_memory_message(kind, exc))


def release_memory() -> None:
    """Give a failed job's memory back (collect its cycles, empty CUDA's cache).

    The failure is caught in this process, so the worker keeps serving; the next job
    should not start with the previous one's tensors still cached.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _end(settings: Settings, fence: states.Fence, status: str, values: dict | None = None) -> str:
    """Move this attempt's running job to ``status`` (only a processing job can succeed);
    Superseded when the job is no longer this attempt's."""
    expect = states.PROCESSING if status == states.SUCCEEDED else states.RUNNING
    with session_scope(settings.database_url) as session:
        moved = states.transition(
            session, fence.job_id, status, expect=expect, values=values, fence=fence
        )
    if not moved:
        raise states.Superseded(fence)
    return status


def _fail(settings: Settings, fence: states.Fence, code: str, message: str) -> str:
    """This attempt's job → failed; Superseded when the job is no longer this attempt's."""
    with session_scope(settings.database_url) as session:
        moved = states.fail(session, fence.job_id, code, message, fence=fence)
    if not moved:
        raise states.Superseded(fence)
    return states.FAILED


def _finish(settings: Settings, fence: states.Fence, metrics: dict[str, Any]) -> str:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, fence.job_id)
        now = utcnow()
        summary = {
            "queue_seconds": round((job.started_at - job.created_at).total_seconds(), 3),
            "run_seconds": round((now - job.started_at).total_seconds(), 3),
            "attempts": job.attempts,
            **metrics,
        }
        total = job.progress_total or job.progress_current
    return _end(
        settings,
        fence,
        states.SUCCEEDED,
        {
            "metrics": summary,
            "finished_at": now,
            "progress_current": total,
            "eta_seconds": 0,
            "preview_step": total,
        },
    )


def run_style_transfer(
    fence: states.Fence,
    params: dict[str, Any],
    inputs: list[tuple[str, str]],
    settings: Settings,
    storage: Storage,
) -> dict[str, Any]:
    """Load the images, run the style engine with progress, store result + preview."""
    from worker.engines.style_transfer import StyleProgress, stylize

    job_id = fence.job_id

    def read(role: str, name: str):
        """The full decode (the submit read only the header): bounds, then pixels."""
        with storage.open(job_key(job_id, name)) as handle:
            data = handle.read()
        try:
            return load_rgb(
                data,
                field=role,
                max_pixels=settings.max_pixels,
                max_aspect_ratio=settings.max_aspect_ratio,
            )
        except InputError as exc:
            raise InvalidInput(exc.message, role) from None

    content = read(*next((role, name) for role, name in inputs if role == "content"))
    styles = [read(role, name) for role, name in inputs if role == "style"]
    mark_processing(settings, fence)
    reporter = ProgressReporter(fence, settings, storage)

    def on_progress(progress: StyleProgress) -> None:
        reporter.report(
            current=progress.step,
            total=progress.total,
            stage=f"scale {progress.scale}/{progress.scales}",
            loss=lambda: progress.loss,  # read (a GPU sync) only when a report is written
            image=progress.image,
        )

    engine_args = {k: params[k] for k in ENGINE_PARAMS if k in params}
    started = time.monotonic()
    result = stylize(content, styles, device=settings.device, callback=on_progress, **engine_args)
    fmt, content_type = OUTPUT_TYPES[params.get("output_format", "png")]
    buffer = io.BytesIO()
    result.image.save(buffer, fmt)
    extension = "jpg" if fmt == "JPEG" else fmt.lower()
    engine_metrics = {
        **result.metrics,
        "seed": result.seed,
        "engine_seconds": round(time.monotonic() - started, 3),
    }
    outputs = [
        store_output(storage, fence, f"result.{extension}", buffer.getvalue(), content_type),
        store_output(
            storage,
            fence,
            "metrics.json",
            json.dumps(engine_metrics, indent=2, default=str).encode(),
            "application/json",
        ),
        save_preview(storage, fence, result.image),
        save_thumbnail(storage, fence, result.image),
    ]
    record_outputs(settings, fence, outputs)
    return {
        "device": result.metrics.get("device"),
        "seed": result.seed,
        "losses": result.metrics.get("losses"),
    }


KIND_RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "style_transfer": run_style_transfer,
    "fine_tune": run_fine_tune,
    "predict": run_predict,
}
