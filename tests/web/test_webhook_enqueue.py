"""A canceled queued job's webhook leaves the web as a cpu-queue message, never a thread."""

from __future__ import annotations

import base64
import json
import socket
import threading

import pytest
import redis

from shared import migrate
from shared.queue import CPU_QUEUE, DELIVER_WEBHOOK_TASK
from tests.conftest import make_settings
from tests.web.helpers import make_job
from web import create_app

CANCELS = 50


@pytest.fixture
def hook_app(tmp_path, fresh_db_url, redis_url):
    settings = make_settings(tmp_path, fresh_db_url, redis_url, webhook_allow_private=True)
    migrate.upgrade(settings.database_url)
    return create_app({"ATELIER_SETTINGS": settings, "TESTING": True})


@pytest.fixture
def hanging_target():
    """Takes connections and never answers (nor accepts): a delivery made in the request,
    or in a thread of it, would sit here until its timeout."""
    with socket.create_server(("127.0.0.1", 0), backlog=CANCELS * 2) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"


def _queued_messages(redis_url: str) -> list[dict]:
    """The tasks waiting in the cpu queue, decoded from kombu's Redis messages."""
    client = redis.Redis.from_url(redis_url)
    try:
        raws = client.lrange(CPU_QUEUE, 0, -1)
    finally:
        client.close()
    messages = []
    for raw in raws:
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append({"task": message["headers"]["task"], "args": args})
    return messages


def test_canceling_queued_jobs_queues_deliveries_and_starts_no_thread(
    hook_app, hanging_target, redis_url
):
    settings = hook_app.config["ATELIER"]
    jobs = [
        make_job(settings, status="queued", webhook_url=hanging_target, webhook_events="completed")
        for _ in range(CANCELS)
    ]
    client = hook_app.test_client()
    threads_before = threading.active_count()
    for job_id in jobs:
        response = client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert response.get_json()["status"] == "canceled"
    assert threading.active_count() == threads_before
    messages = _queued_messages(redis_url)
    assert {m["task"] for m in messages} == {DELIVER_WEBHOOK_TASK}
    assert sorted(json.loads(m["args"][1])["job"]["id"] for m in messages) == sorted(jobs)
    for message in messages:
        url, body, event, delivery, tries_before = message["args"]
        assert (url, event, tries_before) == (hanging_target, "completed", 0)
        assert json.loads(body)["job"]["status"] == "canceled" and delivery


def test_a_job_that_asked_for_start_only_queues_nothing_on_cancel(hook_app, redis_url):
    settings = hook_app.config["ATELIER"]
    job_id = make_job(
        settings, status="queued", webhook_url="http://127.0.0.1:9/", webhook_events="start"
    )
    assert hook_app.test_client().post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    assert _queued_messages(redis_url) == []
