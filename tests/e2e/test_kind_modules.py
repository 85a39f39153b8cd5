"""A job kind from ATELIER_KIND_MODULES runs on a real worker; a kind with no runner fails.

The kind (tests/e2e/measure_kind.py) is one module with its spec and runner, named only
in the worker's environment: the worker loads it at start-up and runs its jobs through
the same lifecycle as the built-in kinds. A job whose kind no module registered ends
``failed`` with code ``internal`` and a message naming the kind.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from shared import states
from shared.db import session_scope
from shared.jobs import StoredFile, add_job, attempt_key, new_job_id
from shared.models import Job
from shared.queue import CPU_QUEUE, RUN_JOB_TASK
from shared.settings import Settings, load_settings
from shared.storage import job_key, open_storage
from tests.conftest import WorkerProcess, tiny_png, wait_for
from web.queue import make_client
from worker import kinds, runner

# one backend is enough: nothing here depends on the database's dialect
sqlite_only = pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)
MODULE = "tests.e2e.measure_kind"


def _queued(settings: Settings, kind: str, params: dict) -> str:
    """A queued job of ``kind`` with one 48×32 image, stored the way the web stores it."""
    job_id, data = new_job_id(), tiny_png(48, 32)
    open_storage(settings.storage_url, settings).put_bytes(job_key(job_id, "in.png"), data)
    with session_scope(settings.database_url) as session:
        stored = StoredFile("image", "in.png", "image/png", len(data))
        add_job(session, job_id=job_id, kind=kind, owner="local", params=params, files=[stored])
    return job_id


def _ended(settings: Settings, job_id: str) -> dict:
    def row() -> dict | None:
        with session_scope(settings.database_url) as session:
            job = session.get(Job, job_id)
            if job.status not in states.TERMINAL:
                return None
            return {
                "status": job.status,
                "error": (job.error_code, job.error_message),
                "metrics": job.metrics,
                "files": {f.name: f.attempt for f in job.files},
            }

    return wait_for(row, timeout=60)


@pytest.fixture
def measure_worker(settings, tmp_path) -> Iterator[WorkerProcess]:
    """A cpu worker whose environment names the kind module (the test process does not)."""
    name = f"kinds-{uuid.uuid4().hex[:8]}"
    worker_settings = replace(settings, kind_modules=MODULE)
    worker = WorkerProcess(worker_settings, name, tmp_path / f"{name}.log", queues=CPU_QUEUE)
    try:
        worker.wait_ready(settings)
        yield worker
    finally:
        worker.stop()


@sqlite_only
def test_a_kind_module_runs_on_a_real_worker(settings, measure_worker):
    client = make_client(settings)
    measured = _queued(settings, "measure", {"scale": 3})
    unknown = _queued(settings, "unheard_of", {})
    for job_id in (measured, unknown):
        client.send_task(RUN_JOB_TASK, args=[job_id], queue=CPU_QUEUE, task_id=job_id)

    done = _ended(settings, measured)
    assert done["status"] == states.SUCCEEDED, done["error"]
    assert done["metrics"]["width"] == 144 and done["metrics"]["height"] == 96
    assert done["metrics"]["attempts"] == 1
    assert done["files"] == {"in.png": None, "size.json": 1}
    storage = open_storage(settings.storage_url, settings)
    with storage.open(attempt_key(measured, 1, "size.json")) as handle:
        assert json.loads(handle.read()) == {"width": 144, "height": 96}

    failed = _ended(settings, unknown)
    assert failed["status"] == states.FAILED
    code, message = failed["error"]
    assert code == "internal" and "'unheard_of'" in message
    assert "ATELIER_KIND_MODULES" in message
    assert MODULE not in sys.modules  # the test process never loaded it


@sqlite_only
def test_a_kind_without_a_runner_fails_in_process(settings):
    job_id = _queued(settings, "unheard_of", {})
    assert runner.run_job(job_id, worker="w1", settings=settings) == states.FAILED
    failed = _ended(settings, job_id)
    assert failed["error"][0] == "internal" and "'unheard_of'" in failed["error"][1]
    assert failed["files"] == {"in.png": None}


def test_the_registry_keeps_one_runner_per_kind():
    def other(_ctx: kinds.RunContext) -> dict:
        return {}

    with pytest.raises(ValueError, match="already has a runner"):
        kinds.register_runner("style_transfer", other)  # a built-in, not imported yet either
    assert kinds.runner_for("unheard_of") is None
    try:
        first = kinds.register_runner("scratch_kind", other, timeout_hint="wait less")
        assert kinds.register_runner("scratch_kind", other) is not None  # the same: no-op
        assert kinds.runner_for("scratch_kind") is kinds.RUNNERS["scratch_kind"]
        assert first.timeout_hint == "wait less"
        with pytest.raises(ValueError):
            kinds.register_runner("scratch_kind", lambda _ctx: {})
    finally:
        kinds.RUNNERS.pop("scratch_kind", None)
    hint = runner.out_of_memory_message("predict", MemoryError())
    assert "fewer or smaller images" in hint
    assert "make the job smaller" in runner.out_of_memory_message("unheard_of", MemoryError())
    limits = replace(load_settings(), soft_time_limit=60)
    assert "60 s limit; lower size or iterations" in runner.timeout_message(
        "style_transfer", limits
    )
