"""JSON API v1 (described by web/openapi.py): submit, get, list, cancel, delete, files."""

from __future__ import annotations

import io
import os
from dataclasses import asdict

from flask import Blueprint, abort, jsonify, redirect, request, send_file

from shared import states
from shared.db import get_engine
from shared.errors import InputError
from shared.housekeeping import active_predicts
from shared.jobs import file_key, get_job, list_jobs, read_job
from shared.models import Job
from shared.quotas import lock_owner
from shared.storage import is_inline, open_storage
from web import db, queue
from web.auth import current_owner, owner_filter
from web.query import list_query
from web.serializers import job_to_dict, read_to_dict
from web.submit import submit_job

bp = Blueprint("api", __name__, url_prefix="/api/v1")


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
    """The job in one query on a pooled connection: each open job page polls this every second.

    No ORM session: opening and closing one cost more CPU than the read itself.
    """
    with get_engine(db.settings().database_url).connect() as connection:
        found = read_job(connection, job_id, owner_filter())
    if found is None:
        raise InputError(f"job {job_id} not found", status=404, code="not_found")
    return jsonify(read_to_dict(found))


bp.add_url_rule("/jobs/<job_id>", endpoint="get_job", view_func=get_job_view)


@bp.get("/jobs")
def list_jobs_view():
    """One page of this owner's jobs; web.query has refused every bad parameter (400)."""
    query = list_query(request.args)
    session = db.session()
    rows, next_cursor = list_jobs(
        session,
        owner=owner_filter(),
        **asdict(query),  # status, kind, limit, cursor: list_jobs' own parameter names
    )
    return jsonify({"results": [job_to_dict(session, j) for j in rows], "next": next_cursor})


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = _job_or_404(job_id)
    session = db.session()
    canceled_here = states.cancel_queued(session, job_id)  # only its winner notifies
    if not canceled_here:
        states.request_cancel(session, job_id)
    session.commit()
    if canceled_here:
        queue.revoke(job_id)
        if job.webhook_url:
            queue.notify(job_id, "completed")
    session.refresh(job)
    return jsonify(job_to_dict(session, job))


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    """Delete a finished job: its row, then its files (a crash between leaves files that
    the orphan sweep removes). A model that queued or running predict jobs still need is
    refused with 409, checked under the owner's lock that a predict's insert takes too,
    so no predict can slip in between the check and the delete."""
    job = _job_or_404(job_id)
    if job.status not in states.TERMINAL:
        raise InputError(
            f"job {job_id} is {job.status}; cancel it and wait for it to end before deleting",
            status=409,
            code="conflict",
        )
    session = db.session()
    lock_owner(session, job.owner)
    users = active_predicts(session, job_id)
    if users:
        raise InputError(
            f"job {job_id} is the model of queued or running predict jobs "
            f"{', '.join(users)}; cancel them or wait for them to end before deleting",
            status=409,
            code="conflict",
        )
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
    key = file_key(job.id, item)  # an output lives under the attempt that wrote it
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
    response = send_file(
        handle,
        mimetype=item.content_type,
        download_name=name,
        as_attachment=not is_inline(item.content_type),
        max_age=0,
    )
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
