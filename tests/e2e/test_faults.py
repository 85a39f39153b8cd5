"""Faults lose no job and run none twice: killed workers, a restarted Redis, a flood of submits.

Each test runs real worker processes and the real dispatcher loop (reaper + outbox) against
its own database; heartbeats time out after a few seconds so the tests stay short.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from shared import migrate
from shared.db import session_scope
from shared.models import Job, JobFile
from tests.conftest import WorkerProcess, make_settings, style_form, tiny_png, wait_for
from web import create_app
from worker.dispatcher import run_forever
from worker.embedded import free_port, redis_server_binary

pytestmark = pytest.mark.slow


@pytest.fixture
def fault_settings(tmp_path, fresh_db_url, redis_url):
    settings = make_settings(tmp_path, fresh_db_url, redis_url, heartbeat_timeout=3)
    migrate.upgrade(settings.database_url)
    return settings


class Dispatcher:
    def __init__(self, settings) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=run_forever, args=(settings, self.stop, 0.5), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def dispatcher(fault_settings):
    running = Dispatcher(fault_settings)
    yield running
    running.close()


def _submit(client, **fields) -> str:
    response = client.post(
        "/api/v1/jobs",
        data=style_form(tiny_png(96, 96), **fields),
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _job(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        job.files  # noqa: B018 - load while the session is open
        return job


def _worker(settings, tmp_path: Path, name: str) -> WorkerProcess:
    worker = WorkerProcess(settings, name, tmp_path / f"{name}.log")
    worker.wait_ready(settings)
    return worker


def test_sigkilled_worker_job_finishes_once_on_another(fault_settings, dispatcher, tmp_path):
    client = create_app({"ATELIER_SETTINGS": fault_settings}).test_client()
    first = _worker(fault_settings, tmp_path, "doomed")
    job_id = _submit(client, size=64, iterations=30, multiscale="false", seed=3)
    wait_for(lambda: _job(fault_settings, job_id).progress_current >= 3, timeout=60)
    first.stop(signal.SIGKILL)  # the whole worker: parent and child, no goodbye
    second = _worker(fault_settings, tmp_path, "rescuer")
    try:
        wait_for(lambda: _job(fault_settings, job_id).status in ("succeeded", "failed"), 300)
    finally:
        second.stop()
    job = _job(fault_settings, job_id)
    assert job.status == "succeeded" and job.attempts == 2
    assert job.worker.startswith("rescuer@")
    results = [f for f in job.files if f.role == "result" and f.name.startswith("result")]
    assert len(results) == 1
    log = (tmp_path / "rescuer.log").read_text()
    assert log.count("succeeded in") >= 1


def test_worker_that_never_comes_back_is_failed_by_the_reaper(fault_settings, tmp_path):
    import dataclasses

    settings = dataclasses.replace(fault_settings, max_attempts=1)
    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    worker = _worker(settings, tmp_path, "lost")
    job_id = _submit(client, size=96, iterations=400, multiscale="false")
    wait_for(lambda: _job(settings, job_id).status == "processing", timeout=60)
    worker.stop(signal.SIGKILL)
    reaper = Dispatcher(settings)
    try:
        wait_for(lambda: _job(settings, job_id).status == "failed", timeout=30)
    finally:
        reaper.close()
    job = _job(settings, job_id)
    assert job.error_code == "attempts_exhausted" and "stopped responding" in job.error_message


def test_sigterm_lets_the_running_job_finish(fault_settings, tmp_path):
    client = create_app({"ATELIER_SETTINGS": fault_settings}).test_client()
    worker = _worker(fault_settings, tmp_path, "graceful")
    job_id = _submit(client, size=64, iterations=30, multiscale="false")
    wait_for(lambda: _job(fault_settings, job_id).status == "processing", timeout=60)
    worker.proc.send_signal(signal.SIGTERM)  # warm shutdown: finish, then exit
    assert worker.proc.wait(120) == 0
    worker.stop()
    job = _job(fault_settings, job_id)
    assert job.status == "succeeded" and job.attempts == 1


def test_submit_while_redis_is_down_runs_when_it_is_back(tmp_path, fresh_db_url):
    port = free_port()
    command = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: _ping(url), timeout=10)
    settings = make_settings(tmp_path, fresh_db_url, url, heartbeat_timeout=3)
    migrate.upgrade(settings.database_url)
    worker = _worker(settings, tmp_path, "patient")
    dispatcher = Dispatcher(settings)
    try:
        server.terminate()
        server.wait(10)
        client = create_app({"ATELIER_SETTINGS": settings}).test_client()
        job_id = _submit(client, size=48, iterations=3)  # 202 although Redis is down
        assert _job(settings, job_id).enqueued_at is None
        time.sleep(1.5)
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for(lambda: _ping(url), timeout=10)
        wait_for(lambda: _job(settings, job_id).status == "succeeded", timeout=90)
        assert _job(settings, job_id).attempts == 1
    finally:
        dispatcher.close()
        worker.stop()
        server.terminate()
        server.wait(10)


def _ping(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_timeout=0.5).ping()
    except redis.RedisError:
        return False


# Submits from 20 threads at once: five per thread are enough to interleave every step of
# a submit with the others' and with two workers' claims; more only adds run time.
FLOOD = 100


def test_a_hundred_concurrent_submits_all_end_once(fault_settings, tmp_path):
    import dataclasses

    # The flood is about duplicates, not the reaper: with the reaper tests' 3 s timeout,
    # a heartbeat that waits behind 20 submitters for SQLite's write lock on a loaded
    # 2-core machine is (rightly) requeued, and attempts would depend on the machine.
    roomy = dataclasses.replace(fault_settings, max_active_per_owner=1000, heartbeat_timeout=60)
    app = create_app({"ATELIER_SETTINGS": roomy})
    dispatcher = Dispatcher(roomy)
    workers = [_worker(roomy, tmp_path, f"flood{i}") for i in range(2)]

    def submit(_i: int) -> str:
        return _submit(app.test_client(), size=32, iterations=1, multiscale="false")

    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            ids = list(pool.map(submit, range(FLOOD)))
        assert len(set(ids)) == FLOOD

        def all_done() -> bool:
            with session_scope(fault_settings.database_url) as session:
                open_jobs = session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.status.not_in(["succeeded", "failed", "canceled"]))
                )
                return open_jobs == 0

        wait_for(all_done, timeout=400, interval=1)
    finally:
        dispatcher.close()
        for worker in workers:
            worker.stop()
    with session_scope(fault_settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == FLOOD
        statuses = dict(
            session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        )
        assert statuses == {"succeeded": FLOOD}
        assert session.scalar(select(func.max(Job.attempts))) == 1
        results = session.scalar(
            select(func.count()).select_from(JobFile).where(JobFile.name == "result.png")
        )
        assert results == FLOOD
