"""Shutdown for autoscalers: SIGTERM drains for ATELIER_DRAIN_SECONDS, then hands back.

A real worker gets SIGTERM on its main process (what Kubernetes and ``docker stop`` send):
a job that ends within the drain ends normally; one still running when the drain runs
out goes back to the queue, its attempt not counted and its files deleted; a second
SIGTERM or SIGINT stops the worker at once and leaves the job to the heartbeat rule.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from shared import migrate
from shared.db import session_scope
from shared.housekeeping import reap_stale
from shared.models import Job, JobFile
from tests.conftest import WorkerProcess, make_settings, style_form, tiny_png, wait_for
from web import create_app
from worker.progress import HANDBACK_GRACE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True),  # no DB race here
]
LONG_JOB = {"size": 96, "iterations": 3000, "multiscale": "false"}


def _settings(tmp_path, database_url, redis_url, drain_seconds: int):
    settings = make_settings(
        tmp_path, database_url, redis_url, drain_seconds=drain_seconds, heartbeat_timeout=3
    )
    migrate.upgrade(settings.database_url)
    return settings


def _start(settings, tmp_path, name: str) -> WorkerProcess:
    worker = WorkerProcess(settings, name, tmp_path / f"{name}.log")
    worker.wait_ready(settings)
    return worker


def _submit(settings, **fields) -> str:
    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    response = client.post(
        "/api/v1/jobs",
        data=style_form(tiny_png(96, 96), **fields),
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _job(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id)


def _output_rows(settings, job_id: str) -> list[str]:
    with session_scope(settings.database_url) as session:
        query = select(JobFile.name).where(JobFile.job_id == job_id, JobFile.attempt.is_not(None))
        return list(session.scalars(query))


def _attempt_folders(settings, job_id: str) -> list[str]:
    folder = Path(settings.storage_url.removeprefix("file://")) / "jobs" / job_id
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("attempt-"))


def _queued_message_ids(settings) -> list[str]:
    raws = redis.Redis.from_url(settings.redis_url).lrange("gpu", 0, -1)
    return [json.loads(raw)["headers"]["id"] for raw in raws]


def _running(settings, job_id: str) -> bool:
    """Processing, with a preview written: the attempt has files to discard."""
    job = _job(settings, job_id)
    return job.status == "processing" and job.preview_step is not None


def test_a_job_still_running_when_the_drain_ends_is_handed_back(tmp_path, fresh_db_url, redis_url):
    settings = _settings(tmp_path, fresh_db_url, redis_url, drain_seconds=2)
    worker = _start(settings, tmp_path, "drained")
    try:
        job_id = _submit(settings, **LONG_JOB)
        wait_for(lambda: _running(settings, job_id), timeout=90, interval=0.1)
        assert _attempt_folders(settings, job_id) == ["attempt-1"]
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(60) == 0
        took = time.monotonic() - started
    finally:
        worker.stop()
    assert settings.drain_seconds <= took < settings.drain_seconds + HANDBACK_GRACE
    job = _job(settings, job_id)
    assert (job.status, job.attempts, job.worker) == ("queued", 0, None)
    assert _output_rows(settings, job_id) == [] and _attempt_folders(settings, job_id) == []
    assert job.enqueued_at is not None and job_id in _queued_message_ids(settings)
    assert "handed back to the queue" in worker.log_path.read_text()


def test_a_job_that_ends_within_the_drain_finishes(tmp_path, fresh_db_url, redis_url):
    settings = _settings(tmp_path, fresh_db_url, redis_url, drain_seconds=60)
    worker = _start(settings, tmp_path, "patient")
    try:
        job_id = _submit(settings, size=48, iterations=20, multiscale="false")
        wait_for(lambda: _job(settings, job_id).status == "processing", timeout=90, interval=0.1)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(60) == 0
    finally:
        worker.stop()
    job = _job(settings, job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert set(_output_rows(settings, job_id)) >= {"result.png", "thumbnail.jpg"}


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_second_signal_stops_at_once_and_the_heartbeat_rule_requeues(
    tmp_path, fresh_db_url, redis_url, second
):
    settings = _settings(tmp_path, fresh_db_url, redis_url, drain_seconds=120)
    worker = _start(settings, tmp_path, "impatient")
    try:
        job_id = _submit(settings, **LONG_JOB)
        wait_for(lambda: _running(settings, job_id), timeout=90, interval=0.1)
        worker.proc.send_signal(signal.SIGTERM)
        draining = "a running job has 120 s"  # logged once the next signal means "now"
        wait_for(lambda: draining in worker.log_path.read_text(), timeout=30)
        worker.proc.send_signal(second)
        worker.proc.wait(30)  # far sooner than the 120 s drain
    finally:
        worker.stop()
    job = _job(settings, job_id)
    assert (job.status, job.attempts) == ("processing", 1)  # not handed back: left as it was

    def reaped() -> bool:
        with session_scope(settings.database_url) as session:
            reap_stale(session, timeout_seconds=settings.heartbeat_timeout, max_attempts=3)
        return _job(settings, job_id).status == "queued"

    wait_for(reaped, timeout=30)
    assert _job(settings, job_id).attempts == 1
