"""JSON API v1 (described by web/openapi.py): submit, get, list, cancel, delete, files."""

from __future__ import annotations

import io
import os
from dataclasses import asdict

from flask import Blueprint, abort, jsonify, redirect, request, send_file

from shared import events as shared_events
from shared import states
from shared.checkpoints import delete_job_checkpoints
from shared.errors import InputError
from shared.housekeeping import active_predicts
from shared.jobs import JobRead, file_key, get_job, list_jobs, mark_enqueued, read_job_pooled
from shared.kinds import sweep as sweeps
from shared.models import Job
from shared.quotas import lock_owner
from shared.storage import is_inline, open_storage
from web import db, events, queue
from web.auth import current_owner, owner_filter
from web.query import list_query
from web.serializers import job_to_dict, read_to_dict
from web.submit import prefer_wait, submit_job

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def _job_or_404(job_id: str) -> Job:
    job = get_job(db.session(), job_id, owner_filter())
    if job is None:
        raise InputError(f"job {job_id} not found", status=404, code="not_found")
    return job


@bp.post("/jobs")
def create_job():
    """Submit; with ``Prefer: wait=N`` the answer waits up to N s for the job to end and
    is then the finished job (201, or 200 for an idempotent repeat), else 202 as ever."""
    wait = prefer_wait(request.headers.get("Prefer"))
    job, created = submit_job(
        request.form,
        request.files,
        current_owner(),
        db.settings(),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    body, status = job_to_dict(db.session(), job), 202 if created else 200
    applied = None
    if wait:
        db.session().close()  # no pooled connection is held while waiting
        finished = _wait(job.id, wait)
        applied = f"wait={wait}" if finished is not False else None
        if finished:
            body, status = read_to_dict(finished), 201 if created else 200
    response = jsonify(body)
    response.status_code = status
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    if applied:
        response.headers["Preference-Applied"] = applied
    return response


def _wait(job_id: str, seconds: int) -> JobRead | None | bool:
    """The job if it ended within ``seconds``; None if not; False when the process had
    no room to wait (the submit still answers 202: the job exists)."""
    try:
        read = events.wait_for_end(db.settings(), job_id, owner_filter(), seconds)
    except InputError as exc:
        if exc.code != "busy":
            raise
        return False
    return read if read is not None and read.job.status in states.TERMINAL else None


def publish_status(job_id: str) -> None:
    """Tell the job's open event streams (web/events.py) that its row changed here."""
    shared_events.notify(db.settings(), job_id, shared_events.STATUS)


def get_job_view(job_id: str):
    """The job in one query on a pooled connection: each open job page polls this every second.

    No ORM session, nor a SQLAlchemy Connection: building and closing them cost more CPU
    than the read itself (shared.jobs.read_job_pooled).
    """
    found = read_job_pooled(db.settings().database_url, job_id, owner_filter())
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
    """Cancel the job; a sweep's children with it (one transaction), and a sweep's last
    child to end hands the sweep over to build its sheet (shared/kinds/sweep.py)."""
    job = _job_or_404(job_id)
    session = db.session()
    canceled_here = states.cancel_queued(session, job_id)  # only its winner notifies
    if not canceled_here:
        states.request_cancel(session, job_id)
    children = sweeps.cancel_children(session, job_id)
    parent = sweeps.after_end(session, job_id) if canceled_here else None
    session.commit()
    for canceled in (job_id, *children):
        publish_status(canceled)
    for child_id in children:
        queue.revoke(child_id)
    if parent is not None and queue.enqueue(parent, sweeps.SPEC.name):
        mark_enqueued(session, parent)
        session.commit()
    if canceled_here:
        queue.revoke(job_id)
        if job.webhook_url:
            queue.notify(job_id, "completed")
        if job.attempts:  # requeued after a lost worker: no attempt continues from them now
            settings = db.settings()
            storage = open_storage(settings.storage_url, settings)
            delete_job_checkpoints(storage, job_id, job.attempts)
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
    publish_status(job_id)  # its open streams end
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
