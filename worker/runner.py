"""Runs one job row from claim to terminal state. Celery-free, so tests can call it directly.

claim (queued→starting) → load inputs → processing → engine with progress → store
outputs → succeeded; every exit path ends in exactly one terminal state or, when the
job was taken elsewhere, touches nothing.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from shared import states
from shared.db import session_scope
from shared.images import load_rgb
from shared.models import Job
from shared.settings import Settings, get_settings
from shared.storage import Storage, job_key, open_storage
from shared.timeutil import utcnow
from worker import webhooks
from worker.engines.errors import Canceled, EngineError
from worker.finetune_runner import run_fine_tune, run_predict
from worker.progress import (
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
    """Run the job if this worker wins the claim; returns its final status (None: not ours)."""
    settings = settings or get_settings()
    with session_scope(settings.database_url) as session:
        if not states.claim(session, job_id, worker):
            log.info("job %s not claimable (already taken, canceled or unknown)", job_id)
            return None
    storage = open_storage(settings.storage_url, settings)
    try:
        with session_scope(settings.database_url) as session:
            job = session.get(Job, job_id)
            kind, params = job.kind, dict(job.params)
            inputs = [(f.role, f.name) for f in job.files if f.role not in OUTPUT_ROLES]
        run = KIND_RUNNERS[kind]
        with Heartbeat(settings, job_id):
            metrics = run(job_id, params, inputs, settings, storage)
        status = _finish(settings, job_id, metrics)
    except Canceled:
        status = _end(settings, job_id, states.CANCELED)
    except EngineError as exc:
        status = _fail(settings, job_id, exc.code, str(exc))
    except SoftTimeLimitExceeded:
        status = _fail(
            settings,
            job_id,
            "timeout",
            f"the job ran past the {settings.soft_time_limit} s limit; "
            "lower size or iterations, or raise ATELIER_SOFT_TIME_LIMIT",
        )
    except Exception as exc:
        log.exception("job %s failed", job_id)
        status = _fail(
            settings,
            job_id,
            "internal",
            f"internal error ({type(exc).__name__}: {exc}); the worker {worker} log has the "
            "traceback — please report it",
        )
    if status in states.TERMINAL:
        webhooks.notify(settings, job_id, "completed", retry=webhooks.schedule_retry)
    return status


def _end(settings: Settings, job_id: str, status: str, values: dict | None = None) -> str:
    """Move a running job to ``status`` (only a processing job can succeed)."""
    expect = states.PROCESSING if status == states.SUCCEEDED else states.RUNNING
    with session_scope(settings.database_url) as session:
        states.transition(session, job_id, status, expect=expect, values=values)
        return session.scalar(select(Job.status).where(Job.id == job_id))


def _fail(settings: Settings, job_id: str, code: str, message: str) -> str:
    with session_scope(settings.database_url) as session:
        states.fail(session, job_id, code, message)
        return session.scalar(select(Job.status).where(Job.id == job_id))


def _finish(settings: Settings, job_id: str, metrics: dict[str, Any]) -> str:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
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
        job_id,
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
    job_id: str,
    params: dict[str, Any],
    inputs: list[tuple[str, str]],
    settings: Settings,
    storage: Storage,
) -> dict[str, Any]:
    """Load the images, run the style engine with progress, store result + preview."""
    from worker.engines.style_transfer import StyleProgress, stylize

    def read(name: str):
        with storage.open(job_key(job_id, name)) as handle:
            return load_rgb(handle.read())

    content = read(next(name for role, name in inputs if role == "content"))
    styles = [read(name) for role, name in inputs if role == "style"]
    mark_processing(settings, job_id)
    reporter = ProgressReporter(job_id, settings, storage)

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
        store_output(storage, job_id, f"result.{extension}", buffer.getvalue(), content_type),
        store_output(
            storage,
            job_id,
            "metrics.json",
            json.dumps(engine_metrics, indent=2, default=str).encode(),
            "application/json",
        ),
        save_preview(storage, job_id, result.image),
        save_thumbnail(storage, job_id, result.image),
    ]
    record_outputs(settings, job_id, outputs)
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
