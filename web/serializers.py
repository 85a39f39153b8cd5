"""The job object of the API (its schema is ``Job`` in web/openapi.py), built from a row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from flask import current_app, has_request_context, request, url_for
from sqlalchemy import Row
from sqlalchemy.orm import Session

from shared.jobs import OUTPUT_ROLES, FileRead, JobRead, queue_position
from shared.kinds.sweep import SPEC as SWEEP_SPEC
from shared.models import Job, JobFile
from shared.timeutil import isoformat

# what werkzeug's path converter leaves unquoted, so links match url_for("api.get_file")
_URL_SAFE = "!$&'()*+,/:;=@"
SWEEP = SWEEP_SPEC.name
_ID = "job-id"  # stands for the id in the link templates below (it is no job id)
_LINKS = ("api.get_job", "pages.job_page")  # a job's API object and its page
_MAX_TEMPLATES = 64


def job_links(job_id: str) -> tuple[str, str]:
    """``url_for`` of the job's API object and of its page, in that order.

    Built from templates that ``url_for`` makes once per script root: a job page polls
    its job every second, and two ``url_for`` calls (binding a URL adapter, building
    through the URL map) were 7 % of such a request's CPU. The id is quoted as
    werkzeug's path converter quotes it; outside a request it is plain ``url_for``.
    """
    if not has_request_context():
        api, page = (url_for(endpoint, job_id=job_id) for endpoint in _LINKS)
        return api, page
    templates = current_app.extensions.setdefault("atelier_job_links", {})
    root = request.script_root
    parts = templates.get(root)
    if parts is None:
        if len(templates) >= _MAX_TEMPLATES:
            templates.clear()
        built = (url_for(endpoint, job_id=_ID).rpartition(_ID) for endpoint in _LINKS)
        parts = templates[root] = tuple((head, tail) for head, _, tail in built)
    quoted = job_id if job_id.isascii() and job_id.isalnum() else quote(job_id, safe=_URL_SAFE)
    (api_head, api_tail), (page_head, page_tail) = parts
    return f"{api_head}{quoted}{api_tail}", f"{page_head}{quoted}{page_tail}"


def _progress(job: Any) -> dict[str, Any]:
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


def _file(item: Any, url: str) -> dict[str, Any]:
    return {
        "name": item.name,
        "role": item.role,
        "content_type": item.content_type,
        "size": item.size,
        "url": url,
    }


def job_to_dict(session: Session, job: Job, *, history: bool = False) -> dict[str, Any]:
    """The job object; ``history`` adds the progress series (single-job reads only)."""
    return job_body(job, job.files, queue_position(session, job), history=history)


def read_to_dict(read: JobRead) -> dict[str, Any]:
    """The job object of a single-job read (:func:`shared.jobs.read_job`), with history."""
    return job_body(read.job, read.files, read.queue_position, history=True)


def job_body(
    job: Job | Row[Any],
    files: Sequence[JobFile | FileRead],
    queue_position: int | None,
    *,
    history: bool = False,
) -> dict[str, Any]:
    """The job object from a Job or a jobs row (same attribute names) and its files.

    The file, cancel and self links all live under the job's own URL, so they are built
    from it (quoted as werkzeug quotes a path part) rather than by one ``url_for`` each:
    a job page polls this every second.
    """
    base, page = job_links(job.id)
    urls = {item.name: f"{base}/files/{quote(item.name, safe=_URL_SAFE)}" for item in files}
    preview = next((f for f in files if f.role == "preview"), None)
    thumbnail = next((f for f in files if f.role == "thumbnail"), None)
    body = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "owner": job.owner,
        "params": job.params,
        "priority": job.priority,
        "inputs": [_file(f, urls[f.name]) for f in files if f.role not in OUTPUT_ROLES],
        "queue_position": queue_position,
        "progress": _progress(job),
        "preview": ({"url": urls[preview.name], "step": job.preview_step} if preview else None),
        "thumbnail": {"url": urls[thumbnail.name]} if thumbnail else None,
        "outputs": [_file(f, urls[f.name]) for f in files if f.role == "result"],
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
            "self": base,
            "cancel": f"{base}/cancel",
            "web": page,
        },
    }
    body["parent_id"] = job.parent_id  # a sweep's child: its sweep
    if job.kind == SWEEP:  # a sweep: its children's ids, in the sheet's grid order
        body["children"] = list((job.params or {}).get("children", []))
        if job.progress_current < (job.progress_total or 0):
            body["queue_position"] = None  # waiting for its children, in no worker's queue
    if history:
        body["progress"]["history"] = job.progress_history or []
    return body
