"""Turning a multipart submit into a stored, enqueued job — or an error and nothing else.

Order matters: validate everything (the kind's handler), write the input files, commit
the row, then enqueue. A failure before the commit removes the files, so bad input
leaves nothing behind; a broker failure after it leaves the row for the dispatcher.
"""

from __future__ import annotations

from collections.abc import Mapping

from werkzeug.datastructures import MultiDict

from shared.errors import InputError
from shared.jobs import add_job, mark_enqueued, new_job_id
from shared.models import Job
from shared.params import validate_kind
from shared.settings import Settings
from shared.storage import job_key, open_storage
from web import db, queue
from web.kinds import HANDLERS, SubmitContext


def submit_job(form: Mapping[str, str], files: MultiDict, owner: str, settings: Settings) -> Job:
    """Validate, store, commit, enqueue; raises InputError for anything the client must fix."""
    kind = validate_kind(form.get("kind"), tuple(HANDLERS))
    handler = HANDLERS[kind]
    unknown = set(files.keys()) - set(handler.file_fields)
    if unknown:
        name = sorted(unknown)[0]
        raise InputError(f"unknown file field {name!r} for {kind}", field=name)
    session = db.session()
    prepared = handler.prepare(SubmitContext(form, files, owner, settings, session))

    job_id = new_job_id()
    storage = open_storage(settings.storage_url, settings)
    try:
        for stored, data in prepared.inputs:
            storage.put_bytes(job_key(job_id, stored.name), data)
        job = add_job(
            session,
            job_id=job_id,
            kind=kind,
            owner=owner,
            params=prepared.params,
            files=[stored for stored, _ in prepared.inputs],
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
