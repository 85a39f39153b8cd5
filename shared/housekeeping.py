"""Housekeeping queries: jobs never published, running jobs whose worker vanished, finished
jobs past retention (never a model that live predict jobs need), and files with no job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import ColumnElement, exists, or_, select, true
from sqlalchemy.orm import Session, aliased

from shared import states
from shared.db import session_scope
from shared.models import Job
from shared.storage import Storage
from shared.timeutil import utcnow

ACTIVE = sorted({states.QUEUED} | states.RUNNING)
ORPHAN_PAGE = 500  # job prefixes looked up in the database per query


def active_predicts(session: Session, model_id: str) -> list[str]:
    """Ids of the queued or running predict jobs that use ``model_id``'s model, oldest first.

    A predict job reads its model when it runs, so the model must outlive them all.
    """
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.kind == "predict",
                Job.status.in_(ACTIVE),
                Job.params["model"].as_string() == model_id,
            )
            .order_by(Job.created_at, Job.id)
        )
    )


def _not_in(queues: Iterable[str]) -> ColumnElement[bool]:
    """Jobs of none of ``queues`` (a job with no recorded queue is of none)."""
    skipped = sorted(queues)
    return or_(Job.queue.is_(None), Job.queue.not_in(skipped)) if skipped else true()


def pending_dispatch(
    session: Session,
    *,
    grace_seconds: float = 5.0,
    limit: int = 100,
    skip_queues: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """Queued rows the broker never took (web could not publish), oldest first.

    ``skip_queues`` (the paused ones) are left out in the query, so a paused queue's
    backlog never hides another queue's jobs behind the limit.
    """
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    rows = session.execute(
        select(Job.id, Job.kind)
        .where(Job.status == states.QUEUED, Job.enqueued_at.is_(None), Job.created_at < cutoff)
        .where(_not_in(skip_queues))
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
        select(Job.id, Job.worker, Job.attempts).where(
            Job.status.in_(sorted(states.RUNNING)), Job.heartbeat_at < cutoff
        )
    ).all()
    moved = []
    for job_id, worker, attempts in stale:
        # Only the attempt that was seen silent, and only while it still is: a worker whose
        # heartbeat lands between the SELECT and this UPDATE keeps its job.
        fence = states.Fence(job_id, worker, attempts) if worker else None
        if attempts >= max_attempts:
            if states.fail(
                session,
                job_id,
                "attempts_exhausted",
                f"the job's worker stopped responding {attempts} times; it may be "
                "too large for the workers' memory — try a smaller size",
                fence=fence,
                silent_since=cutoff,
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
            fence=fence,
            silent_since=cutoff,
        ):
            moved.append((job_id, states.QUEUED))
    return moved


def expired_jobs(session: Session, *, ttl_seconds: int, limit: int = 200) -> list[str]:
    """Finished jobs older than the retention time (none when ttl is 0).

    A model that queued or running predict jobs still use is skipped until they end.
    """
    if ttl_seconds <= 0:
        return []
    cutoff = utcnow() - timedelta(seconds=ttl_seconds)
    user = aliased(Job)
    in_use = exists().where(
        user.kind == "predict",
        user.status.in_(ACTIVE),
        user.params["model"].as_string() == Job.id,
    )
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.status.in_(sorted(states.TERMINAL)), Job.finished_at < cutoff, ~in_use)
            .order_by(Job.finished_at)
            .limit(limit)
        )
    )


def published_but_waiting(
    session: Session,
    *,
    older_than_seconds: float,
    limit: int = 1000,
    skip_queues: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """Queued jobs whose message went out a while ago (candidates for a lost message)."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    rows = session.execute(
        select(Job.id, Job.kind)
        .where(Job.status == states.QUEUED, Job.enqueued_at < cutoff)
        .where(_not_in(skip_queues))
        .order_by(Job.created_at)
        .limit(limit)
    )
    return [(row.id, row.kind) for row in rows]


def orphan_ids(
    session: Session, page: Iterable[tuple[str, float]], *, grace_seconds: float, now: float
) -> list[str]:
    """Of one page of (job id, newest file time), the ids with no row and no file newer
    than the grace period; one query for the whole page.

    The grace spares a submit that has written its files and not yet committed its row.
    """
    old = {job_id for job_id, newest in page if newest <= now - grace_seconds}
    if not old:
        return []
    known = set(session.scalars(select(Job.id).where(Job.id.in_(old))))
    return sorted(old - known)


def sweep_orphan_files(
    database_url: str,
    storage: Storage,
    *,
    grace_seconds: float,
    page_size: int = ORPHAN_PAGE,
    now: float | None = None,
) -> list[str]:
    """Delete the ``jobs/<id>/`` prefixes that have no job row; returns their ids.

    Files outlive their rows when a submit dies between its writes and its commit, when
    DELETE or retention dies between the row and the files, or when a straggling worker
    writes after its job was failed and deleted. Nothing else would ever remove them.
    """
    now = time.time() if now is None else now
    removed: list[str] = []
    for page in storage.job_prefixes(page_size=page_size):
        with session_scope(database_url) as session:
            orphans = orphan_ids(session, page, grace_seconds=grace_seconds, now=now)
        for job_id in orphans:
            storage.delete_prefix(f"jobs/{job_id}")
        removed.extend(orphans)
    return removed
