"""Outbox and reaper queries: jobs never published, and running jobs whose worker vanished."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import states
from shared.models import Job
from shared.timeutil import utcnow


def pending_dispatch(
    session: Session, *, grace_seconds: float = 5.0, limit: int = 100
) -> list[tuple[str, str]]:
    """Queued rows the broker never took (web could not publish), oldest first."""
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    rows = session.execute(
        select(Job.id, Job.kind)
        .where(Job.status == states.QUEUED, Job.enqueued_at.is_(None), Job.created_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return [(row.id, row.kind) for row in rows]


def reap_stale(
    session: Session, *, timeout_seconds: float, max_attempts: int
) -> list[tuple[str, str]]:
    """Requeue (or fail, past the attempts cap) running jobs with no heartbeat for too long.

    Returns (job id, new status) for each job this call moved. A requeued job has
    ``enqueued_at`` cleared so the dispatcher publishes it again.
    """
    cutoff = utcnow() - timedelta(seconds=timeout_seconds)
    stale = session.execute(
        select(Job.id, Job.attempts).where(
            Job.status.in_(sorted(states.RUNNING)), Job.heartbeat_at < cutoff
        )
    ).all()
    moved = []
    for job_id, attempts in stale:
        if attempts >= max_attempts:
            if states.fail(
                session,
                job_id,
                "attempts_exhausted",
                f"the job's worker stopped responding {attempts} times; it may be "
                "too large for the workers' memory — try a smaller size",
            ):
                moved.append((job_id, states.FAILED))
        elif states.transition(
            session,
            job_id,
            states.QUEUED,
            values={
                "enqueued_at": None,
                "worker": None,
                "heartbeat_at": None,
            },
        ):
            moved.append((job_id, states.QUEUED))
    return moved


def expired_jobs(session: Session, *, ttl_seconds: int, limit: int = 200) -> list[str]:
    """Finished jobs older than the retention time (none when ttl is 0)."""
    if ttl_seconds <= 0:
        return []
    cutoff = utcnow() - timedelta(seconds=ttl_seconds)
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.status.in_(sorted(states.TERMINAL)), Job.finished_at < cutoff)
            .order_by(Job.finished_at)
            .limit(limit)
        )
    )


def published_but_waiting(
    session: Session, *, older_than_seconds: float, limit: int = 1000
) -> list[tuple[str, str]]:
    """Queued jobs whose message went out a while ago (candidates for a lost message)."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    rows = session.execute(
        select(Job.id, Job.kind)
        .where(Job.status == states.QUEUED, Job.enqueued_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return [(row.id, row.kind) for row in rows]
