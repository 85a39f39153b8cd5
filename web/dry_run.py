"""``POST /api/v1/jobs?dry_run=true``: the submit's checks and an estimate, nothing stored.

web/submit.py runs the same checks as a real submit (``check_submission``: same
function, same 4xx) and then hands the result here instead of storing it. A dry run
writes no row, no file and no message and counts against neither the submit rate limit
nor the quotas; it reads only the uploads' headers, as the submit does.

A ``sweep`` is estimated as the jobs it would run: the sum of its children's seconds,
each child estimated exactly as a ``style_transfer`` dry run of its params and its two
images is, and the largest child's peak memory (its own contact sheet, a few resizes on
the CPU, is not counted); the answer says how many ``children`` it would create, and
its queue place, workers and ``runnable`` are its children's queue's (``runnable``
needs the sweep's own queue served too).

The answer predicts the job's seconds and peak memory per device class with the
torch-free model of shared/estimates.py, fit on finished jobs (their row's
``metrics.run_seconds`` and ``metrics.device``, and the work read from their
``metrics.json``: ``scales[]`` for style, the dataset counts for fine-tune). The fit is
refreshed at most every :data:`REFIT_SECONDS` per process; each finished job's
``metrics.json`` is read once per process.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from flask import Response, jsonify, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import estimates
from shared.archives import SafeArchive, file_names
from shared.dataset_layout import plan_layout
from shared.errors import InputError
from shared.images import inspect_image
from shared.jobs import StoredFile, file_key
from shared.kinds import KINDS
from shared.kinds import sweep as sweeps
from shared.models import Job, JobFile
from shared.settings import Settings
from shared.states import QUEUED, SUCCEEDED
from shared.storage import open_storage
from shared.workers import Offer, live_offers, redis_client, serving
from web import db

if TYPE_CHECKING:  # web.submit imports this module
    from web.submit import Checked

PARAM = "dry_run"
CHOICES = {"true": True, "false": False}
REFIT_SECONDS = 60.0
FIT_JOBS = 200  # the newest finished jobs of each kind that a refit reads
MAX_METRICS_BYTES = 4 * 2**20  # a metrics.json larger than this is skipped, not parsed

log = logging.getLogger(__name__)


def requested() -> bool:
    """Whether this API request asks for a dry run; 400 naming ``dry_run`` unless the
    value is ``true`` or ``false``. The HTML form's post never is one."""
    if request.blueprint != "api":
        return False
    raw = request.args.get(PARAM)
    if raw is None:
        return False
    if raw not in CHOICES:
        raise InputError(f"{PARAM} must be true or false", field=PARAM)
    return CHOICES[raw]


def answer(checked: Checked) -> Response:
    """The 200 answer for a body that passed ``web.submit.check_submission``."""
    settings, session = db.settings(), db.session()
    spec, params = checked.spec, checked.prepared.params
    jobs = estimated_jobs(checked)
    works = [job_work(job.kind, job.params, job.inputs, settings) for job in jobs]
    lines, fitted = _model(session, settings)
    estimate = {
        device: device_estimate(lines, jobs, works, device) for device in estimates.DEVICE_CLASSES
    }
    work_queue = KINDS[jobs[0].kind].queue  # where the work waits: a sweep's children's
    offers = _offers(settings)
    body = {
        "valid": True,
        "kind": spec.name,
        "params": params,
        "estimate": estimate,
        "runnable": all(serving(offers, queue) for queue in {spec.queue, work_queue}),
        "workers": _workers(offers, work_queue),
        "queue_position": queue_position(session, work_queue),
        "basis": {
            "work": sum(work.amount for work in works),
            "work_unit": works[0].unit,
            "model": "log(seconds) = intercept + slope x log(work), least squares per kind "
            "and device class over finished jobs; built-in coefficients below "
            f"{estimates.MIN_FIT_JOBS} jobs",
            "finished_jobs": fitted,
            "refit_seconds": REFIT_SECONDS,
        },
    }
    if checked.children:
        body["children"] = len(jobs)
        body["basis"]["sweep"] = (
            "the sum of its children's estimates, each that of a style_transfer job of its "
            "params (peak memory: the largest child's); its own contact sheet is not counted"
        )
    session.rollback()  # end the reads; nothing was written
    return jsonify(body)


@dataclass(frozen=True)
class Estimated:
    """One job a submit would run, as its estimate needs it: kind, params, uploads."""

    kind: str
    params: dict[str, Any]
    inputs: list[tuple[StoredFile, bytes]]


def estimated_jobs(checked: Checked) -> list[Estimated]:
    """The jobs a submit would run: a sweep's children (each a style job of its own
    params and copies of its two uploads, as it is stored), else the job itself."""
    if not checked.children:
        return [Estimated(checked.spec.name, checked.prepared.params, checked.prepared.inputs)]
    data = {stored.name: payload for stored, payload in checked.prepared.inputs}
    return [
        Estimated(
            sweeps.STYLE.name,
            child.params,
            [(mine, data[upload.name]) for mine, upload in child.files()],
        )
        for child in checked.children
    ]


def _three(value: float) -> float:
    """3 significant digits: what a prediction of this kind can claim."""
    return float(f"{value:.3g}")


def device_estimate(
    lines: dict[tuple[str, str], estimates.Line],
    jobs: list[Estimated],
    works: list[Work],
    device: str,
) -> dict[str, Any]:
    """Seconds, peak memory and fit size on one device class for ``jobs``: the sum of
    each job's seconds as its own dry run answers them (so a sweep's equals its children
    submitted alone, added up), the largest job's peak (each job runs on its own), and
    the fewest finished jobs any line used was fit on."""
    used = [estimates.line_for(lines, job.kind, device) for job in jobs]
    peaks = [
        peak
        for job, work in zip(jobs, works, strict=True)
        if (peak := peak_bytes(job.kind, job.params, work, device)) is not None
    ]
    return {
        "seconds": _three(
            sum(_three(line.seconds(work.amount)) for line, work in zip(used, works, strict=True))
        ),
        "peak_bytes": max(peaks) if peaks else None,
        "fit_on_jobs": min(line.jobs for line in used),
    }


@dataclass(frozen=True)
class Work:
    """How much a job has to do, in the unit its kind's time model counts."""

    amount: float
    unit: str
    final_dims: tuple[int, int] | None = None


def job_work(
    kind: str, params: dict[str, Any], inputs: list[tuple[Any, bytes]], settings: Settings
) -> Work:
    """The job's work from its params and its checked uploads (headers only)."""
    if kind == "style_transfer":
        content = next(data for stored, data in inputs if stored.role == "content")
        info = inspect_image(
            content,
            field="content",
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            max_aspect_ratio=settings.max_aspect_ratio,
        )
        dims, steps = estimates.style_plan(params, (info.width, info.height))
        if params.get("color_only"):
            return Work(0.0, "pixel-steps", dims[-1])
        return Work(estimates.style_pixel_steps(dims, steps), "pixel-steps", dims[-1])
    if kind == "fine_tune":
        archive = next(data for stored, data in inputs if stored.role == "dataset")
        layout = plan_layout(file_names(SafeArchive(archive).members))
        images = len(layout.train) + len(layout.val or [])
        amount = estimates.finetune_passes(
            images,
            int(params.get("image_size") or estimates.FINETUNE_REFERENCE_SIZE),
            str(params.get("strategy") or "linear_probe"),
            int(params.get("epochs") or 1),
        )
        return Work(amount, "image-passes")
    return Work(float(len(inputs)), "files")


def peak_bytes(kind: str, params: dict[str, Any], work: Work, device: str) -> int | None:
    """The engine's memory estimate (CUDA computes in bf16 where the card supports it)."""
    bf16 = device == "cuda"
    if kind == "style_transfer" and work.final_dims is not None:
        return estimates.estimate_bytes(*work.final_dims, bf16=bf16)
    if kind == "fine_tune":
        size = int(params.get("image_size") or estimates.FINETUNE_REFERENCE_SIZE)
        return estimates.finetune_bytes(int(params.get("batch_size") or 32), size, bf16)
    return None


def queue_position(session: Session, queue: str) -> int:
    """The place a job submitted now would take: one behind every queued job on its
    queue (the fair order, shared/fairness.py, may move it forward among owners)."""
    kinds = [name for name, spec in KINDS.items() if spec.queue == queue]
    ahead = session.scalar(
        select(func.count()).select_from(Job).where(Job.status == QUEUED, Job.kind.in_(kinds))
    )
    return int(ahead or 0) + 1


def _offers(settings: Settings) -> list[Offer | None]:
    """Live worker nodes (shared/workers.py heartbeats); Redis unreachable counts as none."""
    try:
        return live_offers(redis_client(settings.broker_url))
    except redis.RedisError as exc:
        log.warning("dry run could not count workers: %s", exc)
        return []


def _workers(offers: list[Offer | None], queue: str) -> dict[str, Any]:
    """How many live worker nodes, how many consume the job's queue, and the device
    classes those offer (``auto``: the job picks CUDA where the node sees a GPU)."""
    takers = serving(offers, queue)
    return {
        "connected": len(offers),
        "serving_queue": len(takers),
        "device_classes": sorted({offer.device for offer in takers}),
    }


class _Model:
    """The fitted lines of this process, refit at most every REFIT_SECONDS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lines: dict[tuple[str, str], estimates.Line] = {}
        self.fitted = 0
        self.at = float("-inf")
        self.seen: dict[str, estimates.Observation | None] = {}  # job id -> its point


_MODEL = _Model()


def _model(session: Session, settings: Settings) -> tuple[dict, int]:
    with _MODEL.lock:
        if time.monotonic() - _MODEL.at >= REFIT_SECONDS:
            points = observations(session, settings, _MODEL.seen)
            _MODEL.lines = estimates.fit_lines(points)
            _MODEL.fitted = len(points)
            _MODEL.at = time.monotonic()
        return _MODEL.lines, _MODEL.fitted


def reset_model() -> None:
    """Forget the fit and the jobs read (tests; a new database)."""
    with _MODEL.lock:
        _MODEL.lines, _MODEL.fitted, _MODEL.at = {}, 0, float("-inf")
        _MODEL.seen.clear()


def observations(
    session: Session, settings: Settings, seen: dict[str, estimates.Observation | None]
) -> list[estimates.Observation]:
    """(kind, device class, work, run seconds) of the newest finished jobs of each kind."""
    points, current = [], set()
    for kind in ("style_transfer", "fine_tune"):
        rows = session.execute(
            select(Job.id, Job.metrics)
            .where(Job.kind == kind, Job.status == SUCCEEDED)
            .order_by(Job.finished_at.desc())
            .limit(FIT_JOBS)
        ).all()
        for job_id, metrics in rows:
            current.add(job_id)
            if job_id not in seen:
                seen[job_id] = _observe(session, settings, kind, job_id, metrics or {})
            if seen[job_id] is not None:
                points.append(seen[job_id])
    for gone in set(seen) - current:  # deleted, or no longer among the newest
        del seen[gone]
    return points


def _observe(
    session: Session, settings: Settings, kind: str, job_id: str, metrics: dict[str, Any]
) -> estimates.Observation | None:
    device = estimates.device_class(metrics.get("device"))
    seconds = metrics.get("run_seconds")
    if device is None or not isinstance(seconds, int | float):
        return None
    recorded = metrics if "scales" in metrics else _metrics_file(session, settings, job_id)
    work = _recorded_work(kind, recorded)
    return None if work is None else estimates.Observation(kind, device, work, float(seconds))


def _recorded_work(kind: str, recorded: dict[str, Any] | None) -> float | None:
    """The work a finished job did, from what its engine recorded."""
    if not recorded:
        return None
    try:
        if kind == "style_transfer":
            scales = recorded["scales"]
            dims = [tuple(scale["size"]) for scale in scales]
            return estimates.style_pixel_steps(dims, [scale["steps"] for scale in scales])
        dataset, config = recorded["dataset"], recorded["config"]
        images = sum(dataset["train"].values()) + sum(dataset["val"].values())
        return estimates.finetune_passes(
            images, int(config["image_size"]), str(config["strategy"]), int(config["epochs"])
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _metrics_file(session: Session, settings: Settings, job_id: str) -> dict[str, Any] | None:
    """A finished job's metrics.json (its latest attempt's), or None when unreadable."""
    item = session.scalar(
        select(JobFile)
        .where(JobFile.job_id == job_id, JobFile.name == "metrics.json")
        .order_by(JobFile.id.desc())
        .limit(1)
    )
    if item is None or item.size > MAX_METRICS_BYTES:
        return None
    try:
        storage = open_storage(settings.storage_url, settings)
        with storage.open(file_key(job_id, item)) as handle:
            data = json.loads(handle.read(MAX_METRICS_BYTES + 1))
    except Exception as exc:  # any storage's failure: this job just does not count
        log.info("dry run skipped %s's metrics.json: %s", job_id, exc)
        return None
    return data if isinstance(data, dict) else None
