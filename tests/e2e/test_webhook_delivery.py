"""A webhook target that drips its answer costs a job nothing: the delivery runs in the
cpu queue's worker, cut off at the deadline, while the gpu worker finishes the job.

The workers are laid out as in docker-compose.yml: one on the gpu queue, one on cpu.
"""

from __future__ import annotations

import re

import pytest

from shared import migrate
from shared.webhooks import DEADLINE
from tests.conftest import WorkerProcess, make_settings, style_form, wait_for
from tests.webhook_servers import HookServer
from web import create_app

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed", "canceled"}
DELIVERY_DONE = re.compile(r"Task atelier\.deliver_webhook\[[^\]]+\] succeeded in ([0-9.]+)s")


@pytest.fixture
def split_workers(tmp_path, fresh_db_url, redis_url):
    settings = make_settings(tmp_path, fresh_db_url, redis_url, webhook_allow_private=True)
    migrate.upgrade(settings.database_url)
    gpu = WorkerProcess(settings, "hooks-gpu", tmp_path / "gpu.log", queues="gpu")
    cpu = WorkerProcess(settings, "hooks-cpu", tmp_path / "cpu.log", queues="cpu")
    try:
        gpu.wait_ready(settings)
        cpu.wait_ready(settings)
        yield settings, gpu, cpu
    finally:
        gpu.stop()
        cpu.stop()


def _run_job(client, **fields) -> dict:
    response = client.post(
        "/api/v1/jobs", data=style_form(**fields), content_type="multipart/form-data"
    )
    assert response.status_code == 202, response.get_json()
    url = f"/api/v1/jobs/{response.get_json()['id']}"
    return wait_for(
        lambda: (job := client.get(url).get_json())["status"] in TERMINAL and job, timeout=180
    )


def test_a_dripping_start_target_costs_the_job_nothing(split_workers):
    settings, gpu, cpu = split_workers
    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    small = {"size": "64", "iterations": "5"}
    plain = _run_job(client, **small)
    target = HookServer(drip_every=1.0, drip_for=30)
    try:
        hooked = _run_job(client, **small, webhook=target.url(), webhook_events="start")
        # the start delivery (DEADLINE s against this target) was not on the job's path
        assert plain["status"] == hooked["status"] == "succeeded"
        run, plain_run = hooked["metrics"]["run_seconds"], plain["metrics"]["run_seconds"]
        assert run < plain_run + 4, (plain["metrics"], hooked["metrics"])
        took = wait_for(lambda: DELIVERY_DONE.findall(cpu.log_path.read_text()), timeout=60)
    finally:
        target.close()
    assert target.events() == ["start"]
    assert [float(t) for t in took] == pytest.approx([DEADLINE], abs=1.0)
    assert "Task atelier.deliver_webhook[" not in gpu.log_path.read_text()
