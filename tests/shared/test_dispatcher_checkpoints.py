"""A job the dispatcher ends leaves no resume checkpoint in storage.

The reaper fails a job whose attempts are exhausted: no attempt will continue from its
checkpoints, so they go at once (every attempt's, of either kind that writes them), while
a job it only requeues keeps them for its next claim.  Retention removes an expired job's
whole folder, checkpoints included.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from sqlalchemy import update

from shared import states
from shared.checkpoints import checkpoint_key, delete_job_checkpoints
from shared.db import session_scope
from shared.jobs import add_job, new_job_id
from shared.models import Job
from shared.storage import job_key, open_storage
from shared.timeutil import utcnow
from worker.dispatcher import delete_expired, reap


def _stale_job(url: str, kind: str, attempts: int) -> str:
    """A running job of ``kind`` whose worker stopped heartbeating two minutes ago."""
    job_id = new_job_id()
    with session_scope(url) as session:
        add_job(session, job_id=job_id, kind=kind, owner="local", params={}, files=[])
    with session_scope(url) as session:
        states.claim(session, job_id, "gone-worker")
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(attempts=attempts, heartbeat_at=utcnow() - timedelta(seconds=120))
        )
    return job_id


def _write_checkpoints(storage, job_id: str, attempts: int) -> list[str]:
    keys = [checkpoint_key(job_id, attempt) for attempt in range(1, attempts + 1)]
    for key in keys:
        storage.put_bytes(key, b"state")
    storage.put_bytes(job_key(job_id, "input.png"), b"png")
    return keys


def test_the_reaper_deletes_the_checkpoints_of_the_jobs_it_fails(settings):
    settings = dataclasses.replace(settings, heartbeat_timeout=60, max_attempts=3)
    storage = open_storage(settings.storage_url)
    url = settings.database_url
    style = _stale_job(url, "style_transfer", attempts=3)
    tune = _stale_job(url, "fine_tune", attempts=3)
    retry = _stale_job(url, "fine_tune", attempts=1)
    keys = {job_id: _write_checkpoints(storage, job_id, 3) for job_id in (style, tune)}
    retry_keys = _write_checkpoints(storage, retry, 1)
    sent: list[tuple] = []

    reap(settings, lambda task, args, queue: sent.append((task, args, queue)))

    with session_scope(url) as session:
        assert session.get(Job, style).status == "failed"
        assert session.get(Job, tune).status == "failed"
        assert session.get(Job, retry).status == "queued"
    for job_id in (style, tune):
        assert not any(storage.exists(key) for key in keys[job_id])
        assert storage.exists(job_key(job_id, "input.png"))  # only the checkpoints go
    assert all(storage.exists(key) for key in retry_keys)  # its next claim resumes
    assert len(sent) == 2  # the completed webhooks are still queued


def test_retention_removes_an_expired_jobs_checkpoints(settings):
    storage = open_storage(settings.storage_url)
    url = settings.database_url
    job_id = new_job_id()
    with session_scope(url) as session:
        add_job(session, job_id=job_id, kind="fine_tune", owner="local", params={}, files=[])
    keys = _write_checkpoints(storage, job_id, 2)
    with session_scope(url) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="canceled", attempts=2, finished_at=utcnow() - timedelta(days=30))
        )
    assert delete_expired(dataclasses.replace(settings, result_ttl=24 * 3600)) == 1
    assert not any(storage.exists(key) for key in keys)


def test_the_helper_is_best_effort_and_spares_other_jobs(settings, caplog):
    storage = open_storage(settings.storage_url)
    mine, other = new_job_id(), new_job_id()
    mine_keys = _write_checkpoints(storage, mine, 2)
    other_keys = _write_checkpoints(storage, other, 2)
    delete_job_checkpoints(storage, mine, 3)  # an attempt without one is no error
    assert not any(storage.exists(key) for key in mine_keys)
    assert all(storage.exists(key) for key in other_keys)

    class Broken:
        def delete_prefix(self, prefix: str) -> None:
            raise OSError("storage is down")

    delete_job_checkpoints(Broken(), mine, 2)  # logged, not raised
    assert caplog.text.count("could not delete a checkpoint") == 2
