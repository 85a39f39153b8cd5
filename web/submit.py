"""Turning a multipart submit into a stored, enqueued job — or an error and nothing else.

Order matters: admission (rate, quotas), validate everything (the kind's handler from
``web.kinds``, driven by the kind's spec in ``shared.kinds``), write
the input files, commit the row, then enqueue. A failure before the commit removes the
files, so bad input leaves nothing behind; a broker failure after it leaves the row for
the dispatcher; a crash between the files and the commit leaves files that the
dispatcher's orphan sweep removes after a grace period.

A ``sweep`` (shared/kinds/sweep.py) stores its parent and every child in that one
transaction, each child with its own copy of its two inputs, and publishes the children;
the parent waits unpublished until its last child ends.

The early quota check only spares work; the binding one (``shared.quotas.admit``) runs
under the owner's lock in the transaction that inserts the row, after the files are
written, so the lock is held for a count, an insert and a commit, never for an upload.

``?dry_run=true`` on the API stops after the checks (``check_submission``, the same
function) and answers web/dry_run.py's estimate through ``abort(response)``, before the
rate limit, the quotas or the idempotency lookup, which all write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import abort
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from shared.errors import InputError
from shared.jobs import add_job, mark_enqueued, new_job_id
from shared.kinds import KindSpec
from shared.kinds import sweep as sweeps
from shared.models import Job
from shared.quotas import admit, check_admission
from shared.settings import Settings
from shared.states import SUCCEEDED
from shared.storage import Storage, job_key, open_storage
from shared.timeutil import utcnow
from shared.webhooks import check_target, parse_events
from web import db, dry_run, queue
from web.kinds import Prepared, SubmitContext, handler_for, validate_kind
from web.queues import submit_priority
from web.ratelimit import check_submit_rate

IDEMPOTENCY_WINDOW = timedelta(hours=24)
MAX_KEY = 255
MAX_PREFER_WAIT = 60  # seconds a submit may hold its connection for the job to end
MAX_PREFER_LENGTH = 256


def prefer_wait(header: str | None) -> int | None:
    """The N of ``Prefer: wait=N`` (RFC 7240), 0-60 s; other preferences are ignored.

    Checked before anything is stored, so a bad value refuses the submit (400 naming
    ``Prefer``) instead of creating a job the client cannot tell was made.
    """
    if header is None:
        return None
    if len(header) > MAX_PREFER_LENGTH or not header.isprintable():
        raise InputError(
            f"Prefer must be at most {MAX_PREFER_LENGTH} printable characters", field="Prefer"
        )
    for preference in header.split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value.isascii() or not value.isdigit() or int(value) > MAX_PREFER_WAIT:
            raise InputError(
                f"Prefer: wait=N takes whole seconds from 0 to {MAX_PREFER_WAIT}", field="Prefer"
            )
        return int(value)
    return None


def check_idempotency_key(key: str | None) -> None:
    """An Idempotency-Key, when sent, is 1-255 printable characters (400 naming it)."""
    if key is not None and (not key or len(key) > MAX_KEY or not key.isprintable()):
        raise InputError(
            f"Idempotency-Key must be 1-{MAX_KEY} printable characters", field="Idempotency-Key"
        )


def find_idempotent(owner: str, key: str | None) -> Job | None:
    """The job this owner already submitted with ``key`` in the last 24 h, if any.

    An older job keeps its row but gives up the key, so the key can be used again.
    """
    if key is None:
        return None
    check_idempotency_key(key)
    session = db.session()
    cutoff = utcnow() - IDEMPOTENCY_WINDOW
    session.execute(
        update(Job)
        .where(Job.owner == owner, Job.idempotency_key == key, Job.created_at < cutoff)
        .values(idempotency_key=None)
    )
    session.commit()
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _webhook(form: Mapping[str, str], settings: Settings) -> tuple[str | None, str | None]:
    url = (form.get("webhook") or "").strip()
    if not url:
        if form.get("webhook_events"):
            raise InputError("webhook_events needs a webhook URL", field="webhook_events")
        return None, None
    events = parse_events(form.get("webhook_events"))
    check_target(url, allow_private=settings.webhook_allow_private)
    return url, events


def _check_jobs_still_there(session: Session, spec: KindSpec, params: Mapping[str, Any]) -> None:
    """A job a ``job_id`` param names (predict's model, checked by its handler) may have
    been deleted since: check again that it is there and succeeded.

    This runs under the owner's lock, which DELETE takes before it looks for predict jobs
    using a model, so either the delete sees this job (and refuses) or this sees the
    delete. ``FOR SHARE`` also keeps the row until the commit on PostgreSQL.
    """
    for param in spec.params:
        job_id = params.get(param.name) if param.type == "job_id" else None
        if job_id is None:
            continue
        status = session.scalar(
            select(Job.status).where(Job.id == job_id).with_for_update(read=True)
        )
        if status != SUCCEEDED:
            raise InputError(
                f"{param.name}: job {job_id} was deleted while this job was submitted "
                "(or has not succeeded); pick another",
                field=param.name,
                status=409,
                code="conflict",
            )


@dataclass(frozen=True)
class Checked:
    """A submit that passed every check: its kind, its prepared params and input files
    (read, not stored) and its webhook."""

    spec: KindSpec
    prepared: Prepared
    webhook_url: str | None
    webhook_events: str | None
    priority: int
    children: tuple[sweeps.Child, ...] = ()  # a sweep's, in grid order


def check_submission(
    form: Mapping[str, str], files: MultiDict, owner: str, settings: Settings, session: Session
) -> Checked:
    """Every check of a submit's body, storing nothing: the one path that a real submit
    and a dry run (web/dry_run.py) take, so both refuse the same body with the same 4xx."""
    spec = validate_kind(form.get("kind"))
    kind = spec.name
    unknown = set(files.keys()) - set(spec.file_names)
    if unknown:
        name = sorted(unknown)[0]
        raise InputError(f"unknown file field {name!r} for {kind}", field=name)
    webhook_url, webhook_events = _webhook(form, settings)
    priority = submit_priority(form)
    prepared = handler_for(kind)(SubmitContext(spec, form, files, owner, settings, session))
    children: tuple[sweeps.Child, ...] = ()
    if spec is sweeps.SPEC:
        stored = [item for item, _ in prepared.inputs]
        children = tuple(sweeps.plan(prepared.params, stored, settings))
    return Checked(spec, prepared, webhook_url, webhook_events, priority, children)


def submit_job(
    form: Mapping[str, str],
    files: MultiDict,
    owner: str,
    settings: Settings,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Validate, store, commit, enqueue; returns (job, created).

    Raises InputError for anything the client must fix. With an Idempotency-Key seen
    before, returns the first job and ``created=False``. A request to ``POST
    /api/v1/jobs?dry_run=true`` stops after the checks and answers the estimate instead
    (web/dry_run.py): no row, no file, no message, and no count against the rate limit
    or the quotas.
    """
    if dry_run.requested():
        check_idempotency_key(idempotency_key)
        abort(dry_run.answer(check_submission(form, files, owner, settings, db.session())))
    existing = find_idempotent(owner, idempotency_key)
    if existing is not None:
        return existing, False
    check_submit_rate(owner, settings)
    session = db.session()
    check_admission(session, owner, settings)
    checked = check_submission(form, files, owner, settings, session)
    spec, prepared, kind = checked.spec, checked.prepared, checked.spec.name
    webhook_url, webhook_events = checked.webhook_url, checked.webhook_events
    session.commit()  # end the reads: no connection is held while the files are written

    job_id = new_job_id()
    children = [(new_job_id(), child) for child in checked.children]
    storage = open_storage(settings.storage_url, settings)
    try:
        for stored, data in prepared.inputs:
            storage.put_bytes(job_key(job_id, stored.name), data)
        _store_child_inputs(storage, prepared, children)
        # every child counts against the quotas: a sweep is admitted whole or refused
        field = sweeps.swept_field(prepared.params) if children else None
        admit(session, owner, settings, adding=1 + len(children), field=field)
        _check_jobs_still_there(session, spec, prepared.params)
        job = add_job(
            session,
            job_id=job_id,
            kind=kind,
            owner=owner,
            params=prepared.params,
            files=[stored for stored, _ in prepared.inputs],
            priority=checked.priority,
        )
        job.idempotency_key = idempotency_key
        job.webhook_url, job.webhook_events = webhook_url, webhook_events
        if children:
            sweeps.add_children(session, job, children)
        session.commit()
    except IntegrityError:
        session.rollback()
        _delete_files(storage, job_id, children)
        winner = find_idempotent(owner, idempotency_key)
        if winner is None:
            raise
        return winner, False  # a concurrent submit with the same key won
    except Exception:
        session.rollback()
        _delete_files(storage, job_id, children)
        raise
    # a sweep's parent waits, unpublished, for its children (shared/kinds/sweep.py)
    to_publish = [(c, sweeps.STYLE.name) for c, _ in children] or [(job_id, kind)]
    for published_id, published_kind in to_publish:
        if queue.enqueue(published_id, published_kind):
            mark_enqueued(session, published_id)
            session.commit()
    return job, True


def _store_child_inputs(
    storage: Storage, prepared: Prepared, children: list[tuple[str, sweeps.Child]]
) -> None:
    """Each child of a sweep gets its own copy of its content and style upload."""
    data = {stored.name: content for stored, content in prepared.inputs}
    for child_id, child in children:
        for mine, source in child.files():
            storage.put_bytes(job_key(child_id, mine.name), data[source.name])


def _delete_files(storage: Storage, job_id: str, children: list[tuple[str, Any]]) -> None:
    for owner_id in [job_id, *(child_id for child_id, _ in children)]:
        storage.delete_prefix(f"jobs/{owner_id}")
