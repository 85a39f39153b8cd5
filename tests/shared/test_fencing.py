"""Fencing: once a job is requeued and claimed again, the first worker can change nothing.

Worker A claims, the dispatcher requeues the job (A's heartbeats stopped reaching the
database), worker B claims it. Every write A then tries — progress, heartbeat, preview,
start, output rows, every terminal transition, a hand-back — is refused and leaves the
row and the file rows as they were; B's writes go through, and only B's outputs are the
job's. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select, update

from shared import states
from shared.db import session_scope
from shared.housekeeping import reap_stale
from shared.jobs import (
    StoredFile,
    add_job,
    attempt_key,
    file_key,
    new_job_id,
    touch_running,
    write_progress,
)
from shared.models import Job, JobFile
from shared.storage import job_key, open_storage
from shared.timeutil import utcnow
from tests.conftest import BACKENDS, tiny_png
from worker.progress import ProgressReporter, mark_processing, record_outputs, store_output

pytestmark = pytest.mark.parametrize("fresh_db_url", BACKENDS, indirect=True)


def _queued_job(settings) -> str:
    """A queued style job with its input stored the way the web stores it."""
    job_id = new_job_id()
    storage = open_storage(settings.storage_url, settings)
    storage.put_bytes(job_key(job_id, "content.png"), tiny_png())
    with session_scope(settings.database_url) as session:
        add_job(
            session,
            job_id=job_id,
            kind="style_transfer",
            owner="local",
            params={},
            files=[StoredFile("content", "content.png", "image/png", 10)],
        )
    return job_id


def _claim(settings, job_id: str, worker: str) -> states.Fence:
    with session_scope(settings.database_url) as session:
        fence = states.claim(session, job_id, worker)
    assert fence is not None
    return fence


def _process(settings, fence: states.Fence) -> None:
    with session_scope(settings.database_url) as session:
        assert states.transition(
            session, fence.job_id, states.PROCESSING, expect=states.STARTING, fence=fence
        )


def _requeue_as_the_dispatcher_does(settings, job_id: str) -> None:
    """A's heartbeat is older than the timeout, so the reaper requeues the job."""
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
    with session_scope(settings.database_url) as session:
        assert reap_stale(session, timeout_seconds=60, max_attempts=3) == [(job_id, "queued")]


def _snapshot(settings, job_id: str) -> tuple[dict[str, Any], list[tuple]]:
    """Every column of the row and every file row, to show a refused write changed nothing."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        row = {c.name: getattr(job, c.key) for c in Job.__table__.columns}
        files = session.execute(
            select(JobFile.name, JobFile.role, JobFile.size, JobFile.attempt, JobFile.created_at)
            .where(JobFile.job_id == job_id)
            .order_by(JobFile.name)
        ).all()
    return row, [tuple(f) for f in files]


def _refused(settings, write) -> None:
    with pytest.raises(states.Superseded), session_scope(settings.database_url) as session:
        write(session)


def _a_taken_over_by_b(settings) -> tuple[states.Fence, states.Fence]:
    job_id = _queued_job(settings)
    a = _claim(settings, job_id, "worker-a@host")
    _process(settings, a)
    _requeue_as_the_dispatcher_does(settings, job_id)
    b = _claim(settings, job_id, "worker-b@host")
    return a, b


def test_claims_carry_the_attempt_number_as_fencing_token(settings):
    a, b = _a_taken_over_by_b(settings)
    assert (a.worker, a.attempt) == ("worker-a@host", 1)
    assert (b.worker, b.attempt) == ("worker-b@host", 2)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, b.job_id)
        assert (job.status, job.worker, job.attempts) == ("starting", b.worker, 2)


def test_every_write_of_the_superseded_worker_is_refused_and_changes_nothing(settings):
    a, b = _a_taken_over_by_b(settings)
    storage = open_storage(settings.storage_url, settings)
    before = _snapshot(settings, a.job_id)

    _refused(settings, lambda s: write_progress(s, a, {"progress_current": 99}))
    _refused(settings, lambda s: touch_running(s, a))
    with pytest.raises(states.Superseded):
        mark_processing(settings, a)  # starting -> processing: the row is B's
    with pytest.raises(states.Superseded):  # a progress write with a preview
        ProgressReporter(a, settings, storage).report(
            current=5, total=10, stage="x", loss=1.0, image=lambda: Image.new("RGB", (8, 8))
        )
    a_result = store_output(storage, a, "result.png", b"from A", "image/png")
    with pytest.raises(states.Superseded):
        record_outputs(settings, a, [a_result])
    with session_scope(settings.database_url) as session:
        for target in (states.SUCCEEDED, states.CANCELED):
            assert not states.transition(session, a.job_id, target, fence=a)
        assert not states.fail(session, a.job_id, "internal", "x", fence=a)
        assert not states.hand_back(session, a)

    assert _snapshot(settings, a.job_id) == before
    with session_scope(settings.database_url) as session:
        job = session.get(Job, a.job_id)
        assert (job.status, job.worker, job.attempts) == ("starting", b.worker, 2)


def test_the_live_worker_writes_and_only_its_outputs_are_recorded(settings, client):
    a, b = _a_taken_over_by_b(settings)
    storage = open_storage(settings.storage_url, settings)
    store_output(storage, a, "result.png", b"from A", "image/png")  # A's file, never recorded

    _process(settings, b)
    with session_scope(settings.database_url) as session:
        assert write_progress(session, b, {"progress_current": 3}) is False
        touch_running(session, b)
    record_outputs(settings, b, [store_output(storage, b, "result.png", b"from B", "image/png")])
    with session_scope(settings.database_url) as session:
        assert states.transition(session, b.job_id, states.SUCCEEDED, fence=b)
        assert not states.transition(session, b.job_id, states.SUCCEEDED, fence=b)  # once

    with session_scope(settings.database_url) as session:
        job = session.get(Job, b.job_id)
        assert (job.status, job.progress_current, job.attempts) == ("succeeded", 3, 2)
        rows = {f.name: (f.role, f.attempt, file_key(job.id, f)) for f in job.files}
    assert rows == {
        "content.png": ("content", None, job_key(b.job_id, "content.png")),
        "result.png": ("result", 2, attempt_key(b.job_id, 2, "result.png")),
    }
    response = client.get(f"/api/v1/jobs/{b.job_id}/files/result.png")
    assert response.status_code == 200 and response.data == b"from B"
    response.close()


def test_a_claim_drops_the_output_rows_an_earlier_attempt_recorded(settings):
    job_id = _queued_job(settings)
    storage = open_storage(settings.storage_url, settings)
    a = _claim(settings, job_id, "worker-a@host")
    _process(settings, a)
    record_outputs(settings, a, [store_output(storage, a, "result.png", b"A", "image/png")])
    _requeue_as_the_dispatcher_does(settings, job_id)
    _claim(settings, job_id, "worker-b@host")
    with session_scope(settings.database_url) as session:
        names = session.scalars(select(JobFile.name).where(JobFile.job_id == job_id)).all()
    assert names == ["content.png"]  # the input stays; A's result is no output of the job


def test_a_hand_back_requeues_without_counting_the_attempt(settings):
    job_id = _queued_job(settings)
    storage = open_storage(settings.storage_url, settings)
    a = _claim(settings, job_id, "worker-a@host")
    _process(settings, a)
    record_outputs(settings, a, [store_output(storage, a, "preview.jpg", b"A", "image/jpeg")])
    with session_scope(settings.database_url) as session:
        assert states.hand_back(session, a)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.worker, job.enqueued_at) == ("queued", 0, None, None)
        assert [f.name for f in job.files] == ["content.png"]
        assert not states.hand_back(session, a)  # once

    c = _claim(settings, job_id, "worker-c@host")
    assert c.attempt == 1  # the number comes round again, under another worker's name
    _refused(settings, lambda s: write_progress(s, a, {"progress_current": 1}))
    with session_scope(settings.database_url) as session:
        assert write_progress(session, c, {"progress_current": 1}) is False
