"""Fair queues on a real worker: another owner's backlog delays a job by at most one job
per worker, and a paused queue keeps its jobs queued until it is resumed.

The package's worker process (one slot) and database, with owners of this module's own;
the order is read from the job rows (who started before whom), never from how long
anything took.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.models import Job
from shared.tokens import create_token
from tests.conftest import style_form, tiny_png, wait_for
from web import create_app

pytestmark = pytest.mark.slow
BACKLOG = 30  # owner A's jobs; the bound does not depend on it
WORKERS = 1
TERMINAL = ("succeeded", "failed", "canceled")


def _auth(settings, owner: str, role: str = "user") -> dict[str, str]:
    """A token of a new owner named after ``owner``: other tests' jobs are not its own."""
    unique = f"{owner}-{uuid.uuid4().hex[:8]}"
    with session_scope(settings.database_url) as session:
        return {"Authorization": f"Bearer {create_token(session, unique, role)[1]}"}


def _submit(client, headers) -> dict:
    response = client.post(
        "/api/v1/jobs",
        data=style_form(tiny_png(32, 32), size=32, iterations=2, multiscale="false"),
        headers=headers,
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _rows(settings, ids: list[str]) -> dict[str, Job]:
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
        session.expunge_all()
        return {row.id: row for row in rows}


@pytest.fixture
def token_settings(e2e_settings, e2e_worker):
    """The package's database and worker, behind a server that takes tokens."""
    return dataclasses.replace(e2e_settings, auth="token", max_active_per_owner=BACKLOG + 5)


def test_one_owners_backlog_delays_another_by_at_most_one_job_per_worker(token_settings):
    settings = token_settings
    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    ann, bob = _auth(settings, "ann"), _auth(settings, "bob")
    backlog = [_submit(client, ann)["id"] for _ in range(BACKLOG)]
    single = _submit(client, bob)
    waiting_then = sum(row.status == "queued" for row in _rows(settings, backlog).values())
    assert waiting_then >= BACKLOG // 2  # most of ann's jobs were still ahead in FIFO terms
    # and yet bob's job is next, or second when ann has not had her first turn yet
    assert single["queue_position"] <= WORKERS + 1
    wait_for(lambda: _rows(settings, [single["id"]])[single["id"]].status in TERMINAL, 120)
    for job_id in backlog:  # the rest of the backlog would only make the test slower
        client.post(f"/api/v1/jobs/{job_id}/cancel", headers=ann)
    wait_for(lambda: all(row.status in TERMINAL for row in _rows(settings, backlog).values()), 120)
    rows = _rows(settings, [*backlog, single["id"]])
    mine = rows[single["id"]]
    assert mine.status == "succeeded" and mine.attempts == 1
    submitted, started = mine.created_at, mine.started_at
    overtook = [
        row
        for job_id, row in rows.items()
        if job_id in backlog and row.started_at and submitted < row.started_at < started
    ]
    assert len(overtook) <= WORKERS, [(row.id, row.started_at) for row in overtook]
    # nothing ran twice, nothing was lost: every job ended, each run counted once
    assert all(row.status in TERMINAL and row.attempts <= 1 for row in rows.values())
    assert any(row.status == "canceled" for row in rows.values())  # the backlog was long


def test_a_paused_queue_keeps_its_jobs_queued_until_resumed(token_settings, e2e_worker):
    settings = token_settings
    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    ann, root = _auth(settings, "ann"), _auth(settings, "root", "admin")
    assert client.post("/api/v1/queues/gpu/pause", headers=root).get_json()["paused"]
    try:
        job_id = _submit(client, ann)["id"]
        # the worker takes the job's message, claims nothing and says why
        log = e2e_worker.log_path
        wait_for(lambda: f"job {job_id} waits for its resume" in log.read_text(), 60)
        held = _rows(settings, [job_id])[job_id]
        assert held.status == "queued" and held.attempts == 0 and held.enqueued_at is None
        listed = client.get("/api/v1/queues", headers=root).get_json()["queues"]
        assert {q["name"]: q["paused"] for q in listed}["gpu"] is True
    finally:  # the package's other tests share this queue
        resumed = client.post("/api/v1/queues/gpu/resume", headers=root).get_json()
    assert not resumed["paused"]
    wait_for(lambda: _rows(settings, [job_id])[job_id].status in TERMINAL, 120)
    done = _rows(settings, [job_id])[job_id]
    assert done.status == "succeeded" and done.attempts == 1
