"""A style job handed back by a draining worker continues from its checkpoint.

A real worker gets SIGTERM mid-job; when the drain runs out it checkpoints the step it
is at and hands the job back.  The next worker's claim reads that checkpoint and goes on
from there (``metrics.checkpoints.resumed_from``), and once the job has succeeded no
checkpoint is left in storage and none was ever a job file.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlalchemy import select

from shared import migrate
from shared.db import session_scope
from shared.models import Job, JobFile
from shared.states import Fence
from shared.storage import LocalStorage
from tests.conftest import WorkerProcess, make_settings, style_form, tiny_png, wait_for
from web import create_app
from worker.kinds import RunContext
from worker.kinds import checkpoints as runner

# one scale, so the only checkpoint is the one taken at the drain
JOB = {"size": 48, "iterations": 150, "multiscale": "false", "seed": 11}


def _job(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id)


def _checkpoints(settings, job_id: str) -> list[str]:
    folder = Path(settings.storage_url.removeprefix("file://")) / "jobs" / job_id
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-"))


def _file_names(settings, job_id: str) -> list[str]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(JobFile.name).where(JobFile.job_id == job_id)))


@pytest.mark.slow
@pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)
def test_a_drained_job_resumes_from_its_checkpoint(tmp_path, fresh_db_url, redis_url, monkeypatch):
    monkeypatch.setenv("ATELIER_CHECKPOINT_SECONDS", "3600")  # no timed checkpoints
    settings = make_settings(
        tmp_path, fresh_db_url, redis_url, drain_seconds=2, heartbeat_timeout=3
    )
    migrate.upgrade(settings.database_url)
    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    response = client.post(
        "/api/v1/jobs",
        data=style_form(tiny_png(96, 96), **JOB),
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]

    first = WorkerProcess(settings, "first", tmp_path / "first.log")
    try:
        first.wait_ready(settings)
        wait_for(lambda: _job(settings, job_id).preview_step is not None, timeout=90)
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(60) == 0
    finally:
        first.stop()
    handed_back = _job(settings, job_id)
    assert handed_back.status == "queued", first.log_path.read_text()[-3000:]
    assert _checkpoints(settings, job_id) == ["checkpoint-1.pt"]

    second = WorkerProcess(settings, "second", tmp_path / "second.log")
    try:
        second.wait_ready(settings)
        wait_for(lambda: _job(settings, job_id).status in {"succeeded", "failed"}, timeout=240)
    finally:
        second.stop()
    job = _job(settings, job_id)
    assert job.status == "succeeded", job.error
    resumed_from = job.metrics["checkpoints"]["resumed_from"]
    assert resumed_from["scale"] == 1 and 0 < resumed_from["step"] < JOB["iterations"]
    assert _checkpoints(settings, job_id) == []
    assert not any(name.startswith("checkpoint") for name in _file_names(settings, job_id))


def test_an_attempt_reads_the_newest_earlier_checkpoint_and_the_end_deletes_all(tmp_path):
    storage = LocalStorage(tmp_path)
    job_id = "ab" * 16
    ctx = RunContext(Fence(job_id, "w", 3), "style_transfer", {}, {}, None, storage)
    assert runner.read_checkpoint(ctx) is None
    storage.put_bytes(runner.checkpoint_key(job_id, 1), b"first")
    storage.put_bytes(runner.checkpoint_key(job_id, 2), b"second")
    storage.put_bytes(runner.checkpoint_key(job_id, 4), b"a later attempt's")
    assert runner.read_checkpoint(ctx) == b"second"
    runner.delete_checkpoints(ctx)
    assert not storage.exists(runner.checkpoint_key(job_id, 1))
    assert not storage.exists(runner.checkpoint_key(job_id, 2))


@pytest.mark.parametrize(
    ("value", "ok"), [("0", True), ("3600", True), ("-1", False), ("3601", False)]
)
def test_checkpoint_interval_is_a_bounded_setting(monkeypatch, value, ok):
    from shared.settings import load_settings

    monkeypatch.setenv("ATELIER_CHECKPOINT_SECONDS", value)
    if ok:
        assert load_settings().validate().checkpoint_seconds == int(value)
    else:
        with pytest.raises(ValueError, match="ATELIER_CHECKPOINT_SECONDS"):
            load_settings().validate()
