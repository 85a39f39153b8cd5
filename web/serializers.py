"""The job object of API.md, built from a row."""

from __future__ import annotations

from typing import Any

from flask import url_for
from sqlalchemy.orm import Session

from shared.jobs import queue_position
from shared.models import Job, JobFile
from shared.timeutil import isoformat

INPUT_ROLES = ("content", "style", "dataset", "image")


def file_url(job: Job, name: str) -> str:
    return url_for("api.get_file", job_id=job.id, name=name)


def _progress(job: Job) -> dict[str, Any]:
    total = job.progress_total or 0
    percent = round(100.0 * job.progress_current / total, 1) if total else 0.0
    return {
        "current": job.progress_current,
        "total": total,
        "percent": percent,
        "stage": job.progress_stage,
        "eta_seconds": job.eta_seconds,
        "loss": job.progress_loss,
        "detail": job.progress_detail,
    }


def _file(job: Job, item: JobFile) -> dict[str, Any]:
    return {
        "name": item.name,
        "role": item.role,
        "content_type": item.content_type,
        "size": item.size,
        "url": file_url(job, item.name),
    }


def job_to_dict(session: Session, job: Job, *, history: bool = False) -> dict[str, Any]:
    """The job object; ``history`` adds the progress series (single-job reads only)."""
    files = list(job.files)
    preview = next((f for f in files if f.role == "preview"), None)
    thumbnail = next((f for f in files if f.role == "thumbnail"), None)
    body = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "owner": job.owner,
        "params": job.params,
        "inputs": [_file(job, f) for f in files if f.role in INPUT_ROLES],
        "queue_position": queue_position(session, job),
        "progress": _progress(job),
        "preview": (
            {"url": file_url(job, preview.name), "step": job.preview_step} if preview else None
        ),
        "thumbnail": {"url": file_url(job, thumbnail.name)} if thumbnail else None,
        "outputs": [_file(job, f) for f in files if f.role == "result"],
        "metrics": job.metrics or {"attempts": job.attempts},
        "error": (
            {"code": job.error_code, "message": job.error_message} if job.error_code else None
        ),
        "attempts": job.attempts,
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
        "cancel_requested_at": isoformat(job.cancel_requested_at),
        "urls": {
            "self": url_for("api.get_job", job_id=job.id),
            "cancel": url_for("api.cancel_job", job_id=job.id),
            "web": url_for("pages.job_page", job_id=job.id),
        },
    }
    if history:
        body["progress"]["history"] = job.progress_history or []
    return body
