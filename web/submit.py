"""Turning a multipart submit into a stored, enqueued job — or an error and nothing else.

Order matters: validate everything, write the input files, commit the row, then
enqueue. A failure before the commit removes the files, so bad input leaves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from werkzeug.datastructures import FileStorage, MultiDict

from shared.errors import InputError
from shared.images import inspect_image
from shared.jobs import StoredFile, add_job, mark_enqueued, new_job_id
from shared.models import Job
from shared.params import check_style_count, validate_kind, validate_style_params
from shared.settings import Settings
from shared.storage import job_key, open_storage
from web import db, queue

log = logging.getLogger(__name__)

FILE_FIELDS = {"style_transfer": ("content", "style")}


def _read(upload: FileStorage, field: str, limit: int) -> bytes:
    data = upload.stream.read(limit + 1)
    if len(data) > limit:
        raise InputError(
            f"{field}: the file is larger than the {limit} byte limit",
            field=field,
            status=413,
            code="too_large",
        )
    return data


def _style_inputs(files: MultiDict, settings: Settings) -> list[tuple[StoredFile, bytes]]:
    contents = [f for f in files.getlist("content") if f.filename or f.content_length]
    if not contents:
        raise InputError("content is required: upload the content image", field="content")
    if len(contents) > 1:
        raise InputError("content: upload exactly one content image", field="content")
    styles = [f for f in files.getlist("style") if f.filename or f.content_length]
    uploads = [("content", "content", contents[0])] + [
        ("style", f"style-{i}", f) for i, f in enumerate(styles, start=1)
    ]
    inputs = []
    for role, stem, upload in uploads:
        data = _read(upload, role, settings.max_upload_bytes)
        info = inspect_image(
            data, field=role, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels
        )
        inputs.append(
            (StoredFile(role, f"{stem}.{info.extension}", info.content_type, len(data)), data)
        )
    return inputs


def submit_job(form: Mapping[str, str], files: MultiDict, owner: str, settings: Settings) -> Job:
    """Validate, store, commit, enqueue; raises InputError for anything the client must fix."""
    kind = validate_kind(form.get("kind"))
    unknown = set(files.keys()) - set(FILE_FIELDS[kind])
    if unknown:
        name = sorted(unknown)[0]
        raise InputError(f"unknown file field {name!r} for {kind}", field=name)
    params = validate_style_params(form, settings)
    inputs = _style_inputs(files, settings)
    check_style_count(params, sum(1 for stored, _ in inputs if stored.role == "style"))

    job_id = new_job_id()
    storage = open_storage(settings.storage_url)
    session = db.session()
    try:
        for stored, data in inputs:
            storage.put_bytes(job_key(job_id, stored.name), data)
        job = add_job(
            session,
            job_id=job_id,
            kind=kind,
            owner=owner,
            params=params,
            files=[stored for stored, _ in inputs],
        )
        session.commit()
    except Exception:
        session.rollback()
        storage.delete_prefix(f"jobs/{job_id}")
        raise
    if queue.enqueue(job_id, kind):
        mark_enqueued(session, job_id)
        session.commit()
    return job
