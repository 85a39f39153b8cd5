"""A frozen worker that wakes up after its job was taken over changes nothing (fencing).

Two real workers and the real dispatcher loop: the worker running a job is frozen with
SIGSTOP past ATELIER_HEARTBEAT_TIMEOUT, the dispatcher requeues the job, the other worker
takes it over, and then the first is thawed. The job must succeed once, on its second
attempt, with the outputs of that attempt only and one ``completed`` webhook; the thawed
worker must drop its run at its next write and be free for the next job.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shared import migrate
from shared.db import get_engine, session_scope
from shared.models import Job
from tests.conftest import WorkerProcess, make_settings, style_form, tiny_png, wait_for
from tests.webhook_servers import Receiver
from web import create_app
from web.queue import make_client
from worker.dispatcher import run_forever

pytestmark = pytest.mark.slow
HEARTBEAT_TIMEOUT = 3


@pytest.fixture
def fence_settings(tmp_path, fresh_db_url, redis_url):
    settings = make_settings(
        tmp_path,
        fresh_db_url,
        redis_url,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        webhook_allow_private=True,
    )
    migrate.upgrade(settings.database_url)
    return settings


@pytest.fixture
def dispatcher(fence_settings):
    stop = threading.Event()
    thread = threading.Thread(target=run_forever, args=(fence_settings, stop, 0.5), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


@pytest.fixture
def receiver():
    counter = Receiver()
    yield counter
    counter.close()


def _job(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        job.files  # noqa: B018 - load while the session is open
        return job


def _submit(client, **fields) -> str:
    response = client.post(
        "/api/v1/jobs",
        data=style_form(tiny_png(64, 64), **fields),
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _job_row_is_free(settings, job_id: str) -> bool:
    """Whether another process could write the job row now (no lock held on it)."""
    if settings.database_url.startswith("sqlite"):
        conn = sqlite3.connect(settings.database_url.split("sqlite:///", 1)[1], timeout=0.2)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    try:
        with get_engine(settings.database_url).connect() as conn:
            conn.execute(
                text("SELECT id FROM jobs WHERE id = :id FOR UPDATE NOWAIT"), {"id": job_id}
            )
            conn.rollback()
        return True
    except OperationalError:
        return False


def _freeze(worker: WorkerProcess, settings, job_id: str) -> bool:
    """SIGSTOP the whole worker, but not in the middle of a write: a worker frozen while
    it holds the row lock would block the dispatcher too (thaw and let the test retry)."""
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    if _job_row_is_free(settings, job_id):
        return True
    os.killpg(worker.proc.pid, signal.SIGCONT)
    return False


def _active_tasks(worker: WorkerProcess, settings) -> list | None:
    replies = make_client(settings).control.inspect([worker.hostname], timeout=1).active()
    return (replies or {}).get(worker.hostname)


def _attempt_folders(settings, job_id: str) -> list[str]:
    folder = Path(settings.storage_url.removeprefix("file://")) / "jobs" / job_id
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("attempt-"))


def test_a_thawed_worker_cannot_overwrite_the_attempt_that_replaced_it(
    fence_settings, dispatcher, receiver, tmp_path
):
    settings = fence_settings
    workers = [WorkerProcess(settings, n, tmp_path / f"{n}.log") for n in ("one", "two")]
    try:
        for worker in workers:
            worker.wait_ready(settings)
        client = create_app({"ATELIER_SETTINGS": settings}).test_client()
        job_id = _submit(
            client, size=48, iterations=40, multiscale="false", seed=5, webhook=receiver.url
        )
        wait_for(lambda: _job(settings, job_id).progress_current >= 2, timeout=90, interval=0.05)
        first = next(w for w in workers if w.hostname == _job(settings, job_id).worker)
        second = next(w for w in workers if w is not first)

        wait_for(lambda: _freeze(first, settings, job_id), timeout=30, interval=0.05)
        try:
            wait_for(lambda: _job(settings, job_id).worker == second.hostname, timeout=60)
        finally:
            os.killpg(first.proc.pid, signal.SIGCONT)

        wait_for(lambda: _job(settings, job_id).status == "succeeded", timeout=180)
        wait_for(lambda: _active_tasks(first, settings) == [], timeout=60)  # dropped its run
        wait_for(lambda: receiver.events().count("completed") >= 1, timeout=60)
        wait_for(lambda: _attempt_folders(settings, job_id) == ["attempt-2"], timeout=30)

        job = _job(settings, job_id)
        assert (job.status, job.attempts, job.worker) == ("succeeded", 2, second.hostname)
        outputs = {f.name: f.attempt for f in job.files if f.role not in ("content", "style")}
        assert set(outputs) >= {"result.png", "metrics.json", "preview.jpg", "thumbnail.jpg"}
        assert set(outputs.values()) == {2}
        assert receiver.events().count("completed") == 1
        assert "was taken over" in first.log_path.read_text()

        second.stop()
        next_id = _submit(client, size=32, iterations=2, multiscale="false")
        wait_for(lambda: _job(settings, next_id).status == "succeeded", timeout=90)
        assert _job(settings, next_id).worker == first.hostname
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                os.killpg(worker.proc.pid, signal.SIGCONT)  # never leave one frozen
            worker.stop()
