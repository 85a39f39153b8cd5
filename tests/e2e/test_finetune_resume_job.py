"""A fine-tune job handed back by a draining worker continues after its last whole epoch.

A real worker trains (strategy ``full``, real VGG19 on drawn shapes) and checkpoints
after each network epoch; once the first checkpoint is in storage it gets SIGTERM and
hands the job back at its next batch.  The next worker's claim reads that checkpoint and
goes on from the epoch after it (``metrics.checkpoints.resumed_from``), and once the job
has succeeded no checkpoint is left in storage and none was ever a job file.
"""

from __future__ import annotations

import io
import signal

import pytest

from shared import migrate
from shared.checkpoints import checkpoint_key
from shared.states import Fence
from shared.storage import LocalStorage, job_key
from tests.conftest import WorkerProcess, make_settings, wait_for
from tests.e2e.test_resume_job import _checkpoints, _file_names, _job
from tests.finetune_data import make_zip, shape_files
from web import create_app
from worker.engines.errors import InvalidInput
from worker.kinds import RunContext
from worker.kinds import fine_tune as runner
from worker.progress import Drained

EPOCHS = 6
JOB = {
    "strategy": "full",
    "image_size": 32,
    "batch_size": 4,
    "epochs": EPOCHS,
    "early_stopping": 0,
    "export": "none",
    "seed": 3,
}


@pytest.mark.slow
@pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)
def test_a_drained_fine_tune_job_resumes_after_its_last_epoch(tmp_path, fresh_db_url, redis_url):
    settings = make_settings(
        tmp_path,
        fresh_db_url,
        redis_url,
        drain_seconds=0,
        heartbeat_timeout=3,
        checkpoint_seconds=0,
    )
    migrate.upgrade(settings.database_url)
    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    form = {
        "kind": "fine_tune",
        "dataset": (io.BytesIO(make_zip(shape_files(5, seed=4))), "shapes.zip"),
        **{name: str(value) for name, value in JOB.items()},
    }
    response = client.post("/api/v1/jobs", data=form, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]

    first = WorkerProcess(settings, "first", tmp_path / "first.log")
    try:
        first.wait_ready(settings)
        wait_for(lambda: _checkpoints(settings, job_id) == ["checkpoint-1.pt"], timeout=180)
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
        wait_for(lambda: _job(settings, job_id).status in {"succeeded", "failed"}, timeout=300)
    finally:
        second.stop()
    job = _job(settings, job_id)
    assert job.status == "succeeded", (job.error, second.log_path.read_text()[-3000:])
    checkpoints = job.metrics["checkpoints"]
    assert 1 <= checkpoints["resumed_from"]["epoch"] < EPOCHS  # not from the start
    # the second attempt wrote one checkpoint per epoch it trained, and counted their bytes
    assert checkpoints["count"] == EPOCHS - checkpoints["resumed_from"]["epoch"]
    assert checkpoints["bytes"] > 0
    assert _checkpoints(settings, job_id) == []
    assert not any(name.startswith("checkpoint") for name in _file_names(settings, job_id))


class _DrainedContext(RunContext):
    """An attempt whose worker's drain runs out as it reads its inputs."""

    def read(self, name: str) -> bytes:
        raise Drained("the worker is shutting down")


def test_a_failed_attempt_deletes_every_checkpoint_and_a_drained_one_keeps_them(tmp_path):
    storage = LocalStorage(tmp_path)
    job_id = "cd" * 16
    keys = [checkpoint_key(job_id, attempt) for attempt in (1, 2)]
    for key in keys:
        storage.put_bytes(key, b"state")
    storage.put_bytes(job_key(job_id, "dataset.zip"), b"not an archive")
    inputs = {"dataset": ["dataset.zip"]}

    drained = _DrainedContext(Fence(job_id, "w", 2), "fine_tune", {}, inputs, None, storage)
    with pytest.raises(Drained):
        runner.run(drained)
    assert all(storage.exists(key) for key in keys)  # the next claim continues from them

    failed = RunContext(Fence(job_id, "w", 2), "fine_tune", {}, inputs, None, storage)
    with pytest.raises(InvalidInput):
        runner.run(failed)
    assert not any(storage.exists(key) for key in keys)
