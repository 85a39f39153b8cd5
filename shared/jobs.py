"""Queries and writes on job rows that more than one process needs."""

from __future__ import annotations

import base64
import json
import uuid
from collections import namedtuple
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Label,
    Row,
    Select,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, aliased

from shared import fairness
from shared.db import pooled_driver
from shared.models import Job, JobFile, QueuePause
from shared.queue import queue_for
from shared.states import QUEUED, Fence, fenced_update
from shared.storage import JOB_ID, job_key
from shared.timeutil import utcnow

# file roles a worker writes; every other role is an input the client uploaded
OUTPUT_ROLES = frozenset({"result", "preview", "thumbnail"})


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class StoredFile:
    role: str
    name: str
    content_type: str
    size: int


def add_job(
    session: Session,
    *,
    job_id: str,
    kind: str,
    owner: str,
    params: dict[str, Any],
    files: list[StoredFile],
    priority: int = fairness.DEFAULT_PRIORITY,
) -> Job:
    """Insert a queued job with its input files (the caller commits, then enqueues).

    The row records the queue its kind runs on, which the fair claim and the queue
    position filter on (shared/fairness.py); a kind no loaded spec defines gets none and
    runs only on its own message. ``priority`` was checked at the edge.
    """
    try:
        queue: str | None = queue_for(kind)
    except LookupError:
        queue = None
    job = Job(
        id=job_id,
        kind=kind,
        owner=owner,
        status=QUEUED,
        params=params,
        created_at=utcnow(),
        priority=priority,
        queue=queue,
    )
    job.files = [
        JobFile(role=f.role, name=f.name, content_type=f.content_type, size=f.size) for f in files
    ]
    session.add(job)
    return job


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the shape of the ids :func:`new_job_id` makes (32 hex digits)."""
    return bool(JOB_ID.fullmatch(value))


def get_job(session: Session, job_id: str, owner: str | None) -> Job | None:
    """The job, or None when it does not exist, belongs to someone else or is no job id."""
    if not is_job_id(job_id):
        return None  # a NUL byte or other junk never reaches the database
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        return None
    return job


def mark_enqueued(session: Session, job_id: str) -> None:
    """Record that the broker took the job; the caller commits.

    The mark is advisory (a lost one only makes the dispatcher publish the job again, and
    the claim's compare-and-set makes that harmless), so on PostgreSQL its commit does not
    wait for the WAL flush: that wait was the largest part of a submit's latency.

    A job of a paused queue stays unmarked: a worker drops its message (perhaps before
    this runs), and the resume publishes every unmarked job of the queue again.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit = off"))
    paused = exists().where(QueuePause.queue == Job.queue)
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.enqueued_at.is_(None), ~paused)
        .values(enqueued_at=utcnow())
    )


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on anything that is not a cursor this module made."""
    padded = cursor + "=" * (-len(cursor) % 4)
    created, job_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
    return datetime.fromisoformat(created), str(job_id)


def list_jobs(
    session: Session,
    *,
    owner: str | None,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
    parent: str | None = None,
    top_level: bool = False,
) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat.

    ``parent``: only that sweep's children; ``top_level``: no child whose sweep is still
    there (the gallery shows a sweep as one entry).
    """
    query = select(Job)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if parent:
        query = query.where(Job.parent_id == parent)
    if top_level:
        sweep = aliased(Job)
        query = query.where(
            or_(Job.parent_id.is_(None), ~exists().where(sweep.id == Job.parent_id))
        )
    if status:
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    if cursor:
        created, last_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id))
        )
    rows = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


_JOBS = Job.__table__
_FILES = JobFile.__table__
# The read statement is built once per dialect (_read_statement): building a statement
# costs more CPU than running it on a small indexed read, and every poll of a job page
# runs it. The position is the job's place in its queue's fair order, spelt for each
# database's planner (shared/fairness.py).


def _files_as_json(dialect: str) -> Label[Any]:
    """The job's files as one JSON array of [id, name, role, content_type, size] arrays.

    Folding them into the job's row saves a second round trip per read; the functions are
    each database's own, so there is one statement per dialect.
    """
    columns = (_FILES.c.id, _FILES.c.name, _FILES.c.role, _FILES.c.content_type, _FILES.c.size)
    if dialect == "postgresql":
        aggregate = func.coalesce(func.json_agg(func.json_build_array(*columns)), text("'[]'"))
    else:
        aggregate = func.json_group_array(func.json_array(*columns))
    return (
        select(aggregate).where(_FILES.c.job_id == _JOBS.c.id).scalar_subquery().label("files_json")
    )


# what the job object of the API shows: fewer columns are less for the driver to describe
# and decode on every poll (the worker, webhook and idempotency columns stay unread)
ANSWER_COLUMNS = (
    "id",
    "kind",
    "owner",
    "status",
    "params",
    "priority",
    "progress_current",
    "progress_total",
    "progress_stage",
    "progress_loss",
    "eta_seconds",
    "preview_step",
    "progress_detail",
    "progress_history",
    "metrics",
    "error_code",
    "error_message",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "cancel_requested_at",
    "parent_id",
)


@lru_cache(maxsize=4)
def _read_statement(dialect: str) -> Select[Any]:
    columns = [_JOBS.c[name] for name in ANSWER_COLUMNS]
    position = fairness.position_column(dialect)
    return select(*columns, position, _files_as_json(dialect)).where(
        _JOBS.c.id == bindparam("job_id")
    )


def queue_position(session: Session, job: Job) -> int | None:
    """1-based place in its queue's fair order (shared/fairness.py); None unless queued."""
    if job.status != QUEUED:
        return None
    position = session.scalar(fairness.position_of(job.id))
    return None if position is None else int(position)


class FileRead(NamedTuple):
    """A file of a job as a read answers it (the JobFile columns a client sees)."""

    name: str
    role: str
    content_type: str
    size: int


@dataclass(frozen=True)
class JobRead:
    """A job as read for an answer: its row (the :data:`ANSWER_COLUMNS`, named like a
    Job's attributes), its files in the order they were added, and its queue position."""

    job: Row[Any] | _ReadRow
    files: list[FileRead]
    queue_position: int | None


def read_job(connection: Connection, job_id: str, owner: str | None) -> JobRead | None:
    """A job for a read-only answer in one indexed query, or None like :func:`get_job`.

    ``GET /api/v1/jobs/<id>`` is what every open job page polls each second; loading it
    through the ORM (identity map, a lazy load of the files, a third query for the queue
    position) cost several times the reads themselves. A plain row carries the same
    values: the column types still decode JSON and make datetimes aware.
    """
    if not is_job_id(job_id):
        return None
    if not connection.in_transaction():
        # on the driver's cursor (_read_row_driver); one statement sees one snapshot
        # anyway, and without a transaction psycopg sends no BEGIN and the pool's
        # ROLLBACK on return costs nothing: two round trips fewer
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="AUTOCOMMIT")
        row = _read_row_driver(connection.connection.driver_connection, connection.dialect, job_id)
    else:
        statement = _read_statement(connection.dialect.name)
        row = connection.execute(statement, {"job_id": job_id}).first()
    return _answer(row, owner)


def read_job_pooled(database_url: str, job_id: str, owner: str | None) -> JobRead | None:
    """:func:`read_job` on a pooled connection of its own, outside any transaction.

    What each poll of a job page runs, on the driver's cursor of a pooled read connection
    (:func:`shared.db.pooled_driver`: no SQLAlchemy ``Connection``, driver errors raised
    as SQLAlchemy's).
    """
    if not is_job_id(job_id):
        return None
    with pooled_driver(database_url) as (pooled, dialect):
        cursor = _kept_cursor(pooled) if dialect.name == "postgresql" else None
        row = _read_row_driver(pooled.driver_connection, dialect, job_id, cursor)
    return _answer(row, owner)


def _kept_cursor(pooled: Any) -> Any:
    """A psycopg cursor kept with its pooled connection for these reads: making one per
    read was a quarter of psycopg's CPU for it. psycopg fetches the whole result at
    once, so a kept cursor holds nothing on the server between reads (an SQLite one
    would hold its read snapshot, so SQLite gets a new cursor each time)."""
    driver = pooled.driver_connection
    kept = pooled.info.get("atelier_read_cursor")
    if kept is None or kept[0] is not driver:  # first use, or the connection was replaced
        kept = pooled.info["atelier_read_cursor"] = (driver, driver.cursor())
    return kept[1]


def _answer(row: Row[Any] | _ReadRow | None, owner: str | None) -> JobRead | None:
    """The :class:`JobRead` of a read row, or None when there is none or not ``owner``'s."""
    if row is None or (owner is not None and row.owner != owner):
        return None
    files = row.files_json
    if isinstance(files, str):  # SQLite hands JSON back as text, PostgreSQL as lists
        files = json.loads(files)
    ordered = sorted(files or [], key=lambda item: item[0])  # aggregates promise no order
    return JobRead(row, [FileRead(*item[1:]) for item in ordered], row.queue_position)


_ReadRow = namedtuple("_ReadRow", (*ANSWER_COLUMNS, "queue_position", "files_json"))
_READ_TIMES = tuple(i for i, name in enumerate(ANSWER_COLUMNS) if name.endswith("_at"))


@lru_cache(maxsize=4)
def _compiled_read(dialect: Any) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
    """The read statement as the driver's SQL text, the order of its parameters (None:
    by name) and its fixed parameters."""
    compiled = _read_statement(dialect.name).compile(dialect=dialect)
    order = tuple(compiled.positiontup) if compiled.positional else None
    return str(compiled), order, {k: v for k, v in compiled.params.items() if k != "job_id"}


@lru_cache(maxsize=4)
def _sqlite_decoders(dialect: Any) -> tuple[tuple[int, Any], ...]:
    """(column index, SQLAlchemy's own result processor) for each column whose type turns
    SQLite's value into another (JSON text into lists and dicts, text into aware times)."""
    columns = _read_statement(dialect.name).selected_columns
    found = (
        (i, c.type.dialect_impl(dialect).result_processor(dialect, None))
        for i, c in enumerate(columns)
    )
    return tuple((i, process) for i, process in found if process is not None)


def _read_row_driver(driver: Any, dialect: Any, job_id: str, cursor: Any = None) -> _ReadRow | None:
    """The read statement on the driver's own cursor (psycopg or sqlite3): ``cursor``,
    or a new one closed afterwards.

    The same SQL and the same values as through SQLAlchemy's result machinery, which on
    this hottest read (every open job page, every second) cost more CPU than the query:
    describing 23 columns and wrapping the row took about a third of a request. psycopg
    already decodes the JSON columns, and its times are made aware UTC as UTCDateTime
    does; SQLite's values go through the column types' own result processors.
    """
    sql, order, fixed = _compiled_read(dialect)
    params: Any = {**fixed, "job_id": job_id}
    if order is not None:
        params = [params[name] for name in order]
    kept = cursor is not None
    cursor = cursor if kept else driver.cursor()
    try:
        cursor.execute(sql, params)
        values = cursor.fetchone()
    finally:
        if not kept:
            cursor.close()
    if values is None:
        return None
    values = list(values)
    if dialect.name == "sqlite":
        for i, process in _sqlite_decoders(dialect):
            if values[i] is not None:  # every processor leaves None as it is
                values[i] = process(values[i])
    else:
        for i in _READ_TIMES:
            if values[i] is not None:
                values[i] = values[i].replace(tzinfo=UTC)
    return _ReadRow(*values)


def write_progress(session: Session, fence: Fence, values: dict[str, Any]) -> bool:
    """Progress + heartbeat of the fence's attempt; returns whether a cancel was requested.

    Raises Superseded (and changes nothing) once the job is no longer that attempt's.
    """
    fenced_update(session, fence, {**values, "heartbeat_at": utcnow()})
    cancel = session.scalar(select(Job.cancel_requested_at).where(Job.id == fence.job_id))
    return cancel is not None


def touch_running(session: Session, fence: Fence) -> None:
    """Heartbeat only, of the fence's attempt; Superseded once the job moved on."""
    fenced_update(session, fence, {"heartbeat_at": utcnow()})


def add_file(session: Session, job_id: str, stored: StoredFile, attempt: int | None = None) -> None:
    """Record (or replace) a file row; a row of the same name, from an earlier attempt
    or an earlier preview, is taken over rather than duplicated.

    Outputs carry the ``attempt`` that wrote them (see :func:`file_key`); the caller
    makes the fenced write of the same transaction that proves the attempt is live.
    """
    existing = session.scalar(
        select(JobFile).where(JobFile.job_id == job_id, JobFile.name == stored.name)
    )
    if existing is None:
        session.add(
            JobFile(
                job_id=job_id,
                role=stored.role,
                name=stored.name,
                content_type=stored.content_type,
                size=stored.size,
                attempt=attempt,
            )
        )
    else:
        existing.role = stored.role
        existing.size = stored.size
        existing.content_type = stored.content_type
        existing.attempt = attempt
        existing.created_at = utcnow()


def attempt_prefix(job_id: str, attempt: int) -> str:
    """Storage prefix of one worker attempt's files, ``jobs/<id>/attempt-<n>``.

    Each attempt writes only here, so a superseded worker that keeps going for a while
    overwrites nothing of the attempt that replaced it.
    """
    return job_key(job_id, f"attempt-{int(attempt)}")


def attempt_key(job_id: str, attempt: int, name: str) -> str:
    """Storage key of an output file written by ``attempt``."""
    job_key(job_id, name)  # refuses a name that could leave the folder
    return f"{attempt_prefix(job_id, attempt)}/{name}"


def file_key(job_id: str, item: Any) -> str:
    """Where the bytes of a job file row are: under its attempt's prefix for an output,
    at ``jobs/<id>/<name>`` for an input (or an output recorded before attempts were).

    Every reader of a job's files (downloads, thumbnails, result pages, a predict job's
    model) goes through this, never through a key it builds from the name alone.
    """
    attempt = getattr(item, "attempt", None)
    if attempt is None:
        return job_key(job_id, item.name)
    return attempt_key(job_id, attempt, item.name)
