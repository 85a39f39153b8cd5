"""Webhooks reach a receiver (the edge of the world, so a local stand-in), signed, retried."""

from __future__ import annotations

import dataclasses
import json

import pytest

from shared import migrate
from shared.secrets import persistent_secret
from shared.webhooks import verify
from tests.conftest import WorkerProcess, make_settings, style_form, wait_for
from tests.webhook_servers import Receiver
from web import create_app

pytestmark = pytest.mark.slow


@pytest.fixture
def hook_env(tmp_path, fresh_db_url, redis_url):
    settings = make_settings(tmp_path, fresh_db_url, redis_url, webhook_allow_private=True)
    migrate.upgrade(settings.database_url)
    # Deliveries go through the cpu queue: a worker of their own, as in a deployment.
    workers = [
        WorkerProcess(settings, "hooks", tmp_path / "hooks.log", queues="gpu"),
        WorkerProcess(settings, "hooks-cpu", tmp_path / "hooks-cpu.log", queues="cpu"),
    ]
    try:
        for worker in workers:
            worker.wait_ready(settings)
        yield settings
    finally:
        for worker in workers:
            worker.stop()


def _submit(settings, url: str, **fields):
    client = create_app({"ATELIER_SETTINGS": settings}).test_client()
    response = client.post(
        "/api/v1/jobs",
        data=style_form(webhook=url, **fields),
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    return client, response.get_json()["id"]


def test_start_and_completed_are_signed_and_completed_is_retried(hook_env):
    receiver = Receiver(fail_first=1)
    try:
        _client, job_id = _submit(hook_env, receiver.url, iterations="3")
        wait_for(lambda: receiver.events().count("completed") >= 2, timeout=120)
    finally:
        receiver.close()
    assert receiver.events()[0] == "start"
    secret = persistent_secret(hook_env, "webhook_secret")
    completed = [d for d in receiver.deliveries if d["headers"]["Atelier-Event"] == "completed"]
    for delivery in receiver.deliveries:
        assert verify(secret, delivery["headers"]["Atelier-Signature"], delivery["body"])
        assert not verify("wrong", delivery["headers"]["Atelier-Signature"], delivery["body"])
    body = json.loads(completed[-1]["body"])
    assert body["job"]["id"] == job_id and body["job"]["status"] == "succeeded"
    assert "result.png" in {o["name"] for o in body["job"]["outputs"]}
    # the retry is the same delivery, tried again
    assert (
        completed[0]["headers"]["Atelier-Delivery"] == completed[1]["headers"]["Atelier-Delivery"]
    )


def test_canceling_a_queued_job_sends_completed_only_when_asked(hook_env):
    receiver = Receiver()
    blocked = dataclasses.replace(hook_env)
    try:
        client, blocker = _submit(
            blocked,
            receiver.url,
            iterations="2000",
            size="96",
            multiscale="false",
            webhook_events="start",
        )
        wait_for(lambda: "start" in receiver.events(), timeout=60)
        _client, queued = _submit(blocked, receiver.url, webhook_events="completed")
        assert client.post(f"/api/v1/jobs/{queued}/cancel").get_json()["status"] == "canceled"
        wait_for(lambda: "completed" in receiver.events(), timeout=60)
        client.post(f"/api/v1/jobs/{blocker}/cancel")
        wait_for(
            lambda: client.get(f"/api/v1/jobs/{blocker}").get_json()["status"] == "canceled",
            timeout=60,
        )
    finally:
        receiver.close()
    completed = [
        json.loads(d["body"])
        for d in receiver.deliveries
        if d["headers"]["Atelier-Event"] == "completed"
    ]
    # the blocker asked for "start" only, so its cancel sent nothing more
    assert [c["job"]["id"] for c in completed] == [queued]
    assert completed[0]["job"]["status"] == "canceled"
