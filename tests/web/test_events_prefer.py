"""``POST /api/v1/jobs`` with ``Prefer: wait=N``: the finished job when it ends in time.

The job is ended by the worker's own state calls on a thread (claim, processing, the
fenced end, the status event), as a real worker would while the submit waits.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from shared import events, states
from shared.db import session_scope
from shared.models import Job
from tests.conftest import style_form, wait_for
from worker.progress import mark_processing


@pytest.fixture(autouse=True)
def _stop_hub(app):
    yield
    app.extensions["atelier_events"].stop()  # its thread and pub/sub connection end


def _jobs(settings) -> list[str]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Job.id)))


@pytest.mark.parametrize("value", ["wait=61", "wait=-1", "wait=soon", "wait=1.5", "wait="])
def test_a_bad_wait_is_a_400_naming_prefer_and_stores_nothing(client, settings, value):
    response = client.post(
        "/api/v1/jobs", data=style_form(), headers={"Prefer": f"respond-async, {value}"}
    )
    assert response.status_code == 400
    assert response.json["error"]["field"] == "Prefer"
    assert _jobs(settings) == []


def test_a_job_still_running_after_the_wait_is_a_202(client):
    response = client.post("/api/v1/jobs", data=style_form(), headers={"Prefer": "wait=1"})
    assert response.status_code == 202 and response.json["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=1"
    other = client.post("/api/v1/jobs", data=style_form(), headers={"Prefer": "respond-async"})
    assert other.status_code == 202 and "Preference-Applied" not in other.headers


def _finish_the_next_job(settings) -> threading.Thread:
    def run() -> None:
        job_id = wait_for(lambda: next(iter(_jobs(settings)), None), timeout=30)
        with session_scope(settings.database_url) as session:
            fence = wait_for(lambda: states.claim(session, job_id, "test-worker"), timeout=30)
        mark_processing(settings, fence)
        with session_scope(settings.database_url) as session:
            states.transition(session, job_id, states.SUCCEEDED, fence=fence)
        events.notify(settings, job_id, events.STATUS)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_job_that_ends_within_the_wait_is_answered_finished(client, settings):
    finisher = _finish_the_next_job(settings)
    response = client.post("/api/v1/jobs", data=style_form(), headers={"Prefer": "wait=60"})
    finisher.join(30)
    assert response.status_code == 201, response.json
    assert response.json["status"] == "succeeded"
    assert response.headers["Preference-Applied"] == "wait=60"
    assert response.headers["Location"] == f"/api/v1/jobs/{response.json['id']}"
