"""JSON API v1 (the contract is ../docs API.md): submit, get, list, cancel, delete, files."""

from __future__ import annotations

import io
import os

from flask import Blueprint, abort, jsonify, redirect, request, send_file

from shared import states
from shared.errors import InputError
from shared.jobs import get_job, list_jobs
from shared.models import Job
from shared.storage import job_key, open_storage
from web import db, queue
from web.auth import current_owner, owner_filter
from web.serializers import job_to_dict
from web.submit import submit_job

bp = Blueprint("api", __name__, url_prefix="/api/v1")
MAX_LIMIT = 100


def _job_or_404(job_id: str) -> Job:
    job = get_job(db.session(), job_id, owner_filter())
    if job is None:
        raise InputError(f"job {job_id} not found", status=404, code="not_found")
    return job


@bp.post("/jobs")
def create_job():
    job, created = submit_job(
        request.form,
        request.files,
        current_owner(),
        db.settings(),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    response = jsonify(job_to_dict(db.session(), job))
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return response


def get_job_view(job_id: str):
    return jsonify(job_to_dict(db.session(), _job_or_404(job_id), history=True))


bp.add_url_rule("/jobs/<job_id>", endpoint="get_job", view_func=get_job_view)


@bp.get("/jobs")
def list_jobs_view():
    status = request.args.get("status") or None
    if status and status not in states.STATUSES:
        raise InputError(f"status must be one of {', '.join(states.STATUSES)}", field="status")
    try:
        limit = int(request.args.get("limit", 20))
    except ValueError:
        raise InputError("limit must be a whole number", field="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    try:
        rows, next_cursor = list_jobs(
            db.session(),
            owner=owner_filter(),
            status=status,
            kind=request.args.get("kind") or None,
            limit=limit,
            cursor=request.args.get("cursor") or None,
        )
    except (ValueError, TypeError):
        raise InputError(
            "cursor is not valid; use the `next` value of a previous page", field="cursor"
        ) from None
    session = db.session()
    return jsonify({"results": [job_to_dict(session, j) for j in rows], "next": next_cursor})


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = _job_or_404(job_id)
    session = db.session()
    was_queued = job.status == states.QUEUED
    status = states.request_cancel(session, job_id)
    session.commit()
    if was_queued and status == states.CANCELED:
        queue.revoke(job_id)
        if job.webhook_url:
            queue.notify(job_id, "completed")
    session.refresh(job)
    return jsonify(job_to_dict(session, job))


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    job = _job_or_404(job_id)
    if job.status not in states.TERMINAL:
        raise InputError(
            f"job {job_id} is {job.status}; cancel it and wait for it to end before deleting",
            status=409,
            code="conflict",
        )
    session = db.session()
    session.delete(job)
    session.commit()
    settings = db.settings()
    open_storage(settings.storage_url, settings).delete_prefix(f"jobs/{job_id}")
    return "", 204


@bp.get("/jobs/<job_id>/files/<name>")
def get_file(job_id: str, name: str):
    """Redirect to a presigned URL when the storage offers one (S3), else stream the file."""
    job = _job_or_404(job_id)
    item = next((f for f in job.files if f.name == name), None)
    settings = db.settings()
    storage = open_storage(settings.storage_url, settings)
    missing = InputError(f"job {job_id} has no file {name!r}", status=404, code="not_found")
    if item is None:
        raise missing
    key = job_key(job.id, name)
    url = storage.download_url(key, filename=name, content_type=item.content_type)
    if url is not None:
        if not storage.exists(key):
            raise missing
        response = redirect(url, code=302)
        response.headers["Cache-Control"] = "no-store"
        return response
    try:
        handle = storage.open(key)
    except FileNotFoundError:
        raise missing from None
    response = send_file(handle, mimetype=item.content_type, download_name=name, max_age=0)
    size = _size_of(handle)
    if size is not None:  # a local file: the length of what was opened, not of the row
        response.content_length = size
    return response


def _size_of(handle) -> int | None:
    try:
        return os.fstat(handle.fileno()).st_size
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


@bp.route("/<path:_rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown_endpoint(_rest: str):
    abort(404)
