"""The reaper takes only a job that is still silent, and a queued job's cancel notifies once.

The reaper reads the stale jobs, then moves each one: a heartbeat that lands in between
must keep the job with its worker (before, the worker was superseded and the job ran
again). Two cancels of one queued job racing each other must not both owe the
``completed`` webhook. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from shared import states
from shared.db import session_scope
from shared.jobs import add_job, new_job_id
from shared.models import Job
from shared.timeutil import utcnow
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("fresh_db_url", BACKENDS, indirect=True)


def _job(settings, status: str = states.QUEUED) -> str:
    job_id = new_job_id()
    with session_scope(settings.database_url) as session:
        add_job(session, job_id=job_id, kind="style_transfer", owner="local", params={}, files=[])
    if status != states.QUEUED:
        with session_scope(settings.database_url) as session:
            assert states.claim(session, job_id, "w1") is not None
    return job_id


def test_a_heartbeat_after_the_reaper_looked_keeps_the_job(settings):
    job_id = _job(settings, states.STARTING)
    looked = utcnow()
    with session_scope(settings.database_url) as session:  # the worker beats just now
        session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=looked + timedelta(seconds=1))
        )
    fence = states.Fence(job_id, "w1", 1)
    with session_scope(settings.database_url) as session:
        assert not states.transition(
            session, job_id, states.QUEUED, fence=fence, silent_since=looked
        )
        assert not states.fail(
            session, job_id, "attempts_exhausted", "gone", fence=fence, silent_since=looked
        )
        row = session.get(Job, job_id)
        assert (row.status, row.worker) == (states.STARTING, "w1")
    later = looked + timedelta(seconds=5)
    with session_scope(settings.database_url) as session:  # still silent later: requeued
        assert states.transition(session, job_id, states.QUEUED, fence=fence, silent_since=later)


def test_only_one_cancel_of_a_queued_job_owes_the_webhook(settings):
    job_id = _job(settings)
    with session_scope(settings.database_url) as first:
        assert states.cancel_queued(first, job_id)
    with session_scope(settings.database_url) as second:
        assert not states.cancel_queued(second, job_id)
        assert states.request_cancel(second, job_id) == states.CANCELED
