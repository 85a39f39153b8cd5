"""Opt-in ``progress`` and ``output`` webhooks: throttled, queued on the cpu queue.

The progress reporter is the worker's own, on a clock the test steps one second per
call, so the throttle's effect is counted exactly; deliveries are read back from the
cpu queue in Redis, where a cpu worker would take them.
"""

from __future__ import annotations

import itertools
import json

import pytest
from PIL import Image

from shared import migrate, states
from shared.db import session_scope
from shared.queue import DELIVER_WEBHOOK_TASK
from shared.storage import open_storage
from shared.webhooks import PROGRESS_INTERVAL
from tests.conftest import make_settings, style_form
from tests.web.helpers import make_job
from tests.web.test_webhook_enqueue import _queued_messages
from web import create_app
from worker.progress import ProgressReporter, mark_processing

REPORTS = 12


@pytest.fixture
def hook_settings(tmp_path, fresh_db_url, redis_url):
    settings = make_settings(tmp_path, fresh_db_url, redis_url, webhook_allow_private=True)
    migrate.upgrade(settings.database_url)
    return settings


def _run_reports(settings, job_id: str) -> None:
    with session_scope(settings.database_url) as session:
        fence = states.claim(session, job_id, "test-worker")
    mark_processing(settings, fence)
    ticks = itertools.count()
    storage = open_storage(settings.storage_url, settings)
    reporter = ProgressReporter(fence, settings, storage, clock=lambda: float(next(ticks)))
    for step in range(1, REPORTS + 1):
        image = Image.new("RGB", (8, 8), (step * 20, 0, 0))
        reporter.report(current=step, total=REPORTS, stage=None, loss=1.0, image=lambda i=image: i)


def _deliveries(redis_url: str) -> list[tuple[str, dict]]:
    messages = _queued_messages(redis_url)
    assert {m["task"] for m in messages} <= {DELIVER_WEBHOOK_TASK}
    return [(m["args"][2], json.loads(m["args"][1])) for m in messages]


def test_progress_and_output_are_sent_when_asked_at_most_every_interval(hook_settings, redis_url):
    job_id = make_job(
        hook_settings,
        status="queued",
        webhook_url="http://127.0.0.1:9/hook",
        webhook_events="progress,output",
    )
    _run_reports(hook_settings, job_id)
    deliveries = _deliveries(redis_url)
    # one report a second for REPORTS seconds, every one with a new preview
    expected = len(range(0, REPORTS, int(PROGRESS_INTERVAL)))
    progress = [body for event, body in deliveries if event == "progress"]
    output = [body for event, body in deliveries if event == "output"]
    assert len(progress) == expected and len(output) == expected
    assert sorted(body["job"]["progress"]["current"] for body in progress) == [1, 6, 11]
    first_output = min(output, key=lambda body: body["job"]["preview"]["step"])
    assert first_output["job"]["preview"] == {
        "url": f"/api/v1/jobs/{job_id}/files/preview.jpg",
        "step": 1,
    }
    assert {event for event, _ in deliveries} == {"progress", "output"}  # no start: not asked


def test_the_default_events_send_no_progress(hook_settings, redis_url):
    job_id = make_job(
        hook_settings,
        status="queued",
        webhook_url="http://127.0.0.1:9/hook",
        webhook_events="start,completed",
    )
    _run_reports(hook_settings, job_id)
    assert [event for event, _ in _deliveries(redis_url)] == ["start"]


def test_submit_accepts_the_new_events_and_refuses_unknown_ones(hook_settings):
    client = create_app({"ATELIER_SETTINGS": hook_settings, "TESTING": True}).test_client()
    hook = "http://127.0.0.1:9/hook"
    accepted = client.post(
        "/api/v1/jobs", data=style_form(webhook=hook, webhook_events="output, progress")
    )
    assert accepted.status_code == 202
    refused = client.post("/api/v1/jobs", data=style_form(webhook=hook, webhook_events="preview"))
    assert refused.status_code == 400 and refused.json["error"]["field"] == "webhook_events"
