"""Admission limits checked before a job is stored: per-owner active jobs, the global queue."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import states
from shared.errors import InputError
from shared.models import Job
from shared.settings import Settings

ACTIVE = sorted({states.QUEUED} | states.RUNNING)


def check_admission(session: Session, owner: str, settings: Settings) -> None:
    """Raise 429 when the owner has too many active jobs, 503 when the queue is full."""
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.status.in_(ACTIVE))
    )
    if active >= settings.max_active_per_owner:
        raise InputError(
            f"you already have {active} queued or running jobs (limit "
            f"{settings.max_active_per_owner}); wait for some to finish or cancel some",
            status=429,
            code="quota_exceeded",
            retry_after=30,
        )
    queued = session.scalar(
        select(func.count()).select_from(Job).where(Job.status == states.QUEUED)
    )
    if queued >= settings.max_queued_total:
        raise InputError(
            f"the queue is full ({queued} jobs waiting); try again in a few minutes",
            status=503,
            code="queue_full",
            retry_after=120,
        )
