"""Queries and writes on job rows that more than one process needs."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from shared.models import Job, JobFile
from shared.states import QUEUED, RUNNING
from shared.timeutil import utcnow


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
) -> Job:
    """Insert a queued job with its input files (the caller commits, then enqueues)."""
    job = Job(id=job_id, kind=kind, owner=owner, status=QUEUED, params=params, created_at=utcnow())
    job.files = [
        JobFile(role=f.role, name=f.name, content_type=f.content_type, size=f.size) for f in files
    ]
    session.add(job)
    return job


def get_job(session: Session, job_id: str, owner: str | None) -> Job | None:
    """The job, or None when it does not exist or belongs to someone else."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        return None
    return job


def mark_enqueued(session: Session, job_id: str) -> None:
    """Record that the broker took the job; the caller commits.

    The mark is advisory (a lost one only makes the dispatcher publish the job again, and
    the claim's compare-and-set makes that harmless), so on PostgreSQL its commit does not
    wait for the WAL flush: that wait was the largest part of a submit's latency.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit = off"))
    session.execute(
        update(Job).where(Job.id == job_id, Job.enqueued_at.is_(None)).values(enqueued_at=utcnow())
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
) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat."""
    query = select(Job)
    if owner is not None:
        query = query.where(Job.owner == owner)
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


def queue_position(session: Session, job: Job) -> int | None:
    """1-based place among queued jobs of the same queue, oldest first; None unless queued."""
    if job.status != QUEUED:
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            Job.status == QUEUED,
            or_(
                Job.created_at < job.created_at,
                and_(Job.created_at == job.created_at, Job.id < job.id),
            ),
        )
    )
    return int(ahead or 0) + 1


def write_progress(session: Session, job_id: str, values: dict[str, Any]) -> tuple[bool, bool]:
    """Progress + heartbeat for a running job; returns (still running, cancel requested)."""
    values = {**values, "heartbeat_at": utcnow()}
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sorted(RUNNING)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    cancel = session.scalar(select(Job.cancel_requested_at).where(Job.id == job_id))
    return result.rowcount == 1, cancel is not None


def touch_running(session: Session, job_id: str) -> None:
    """Heartbeat only, for a running job."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sorted(RUNNING)))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def add_file(session: Session, job_id: str, stored: StoredFile) -> None:
    """Record (or refresh) an output file row; re-runs overwrite rather than duplicate."""
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
            )
        )
    else:
        existing.size = stored.size
        existing.content_type = stored.content_type
        existing.created_at = utcnow()
