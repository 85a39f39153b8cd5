"""``atelier status --wait`` follows the job's event stream, and polls when refused.

The job is a row advanced by the worker's own state and progress code on a thread (no
worker process takes it: it was never queued), so the test decides when each event
happens; ``Client`` methods are wrapped only to see which way the client went.
"""

from __future__ import annotations

import json
import threading

import pytest
import requests

from shared import events, states
from shared.db import session_scope
from shared.storage import open_storage
from tests.web.helpers import make_job
from worker import client_cli
from worker.progress import ProgressReporter, mark_processing


class Calls:
    """Counts a Client's calls and lets a test wait for one to happen."""

    def __init__(self, monkeypatch) -> None:
        self.gets, self.streamed, self.refused = 0, threading.Event(), threading.Event()
        self.polled = threading.Event()
        get, stream = client_cli.Client.get, client_cli.Client.events
        calls = self

        def counted_get(client, job_id):
            calls.gets += 1
            if calls.gets > 1:
                calls.polled.set()
            return get(client, job_id)

        def watched_events(client, job_id, last_event_id=None):
            try:
                for item in stream(client, job_id, last_event_id):
                    calls.streamed.set()
                    yield item
            except client_cli.ApiError:
                calls.refused.set()
                raise

        monkeypatch.setattr(client_cli.Client, "get", counted_get)
        monkeypatch.setattr(client_cli.Client, "events", watched_events)


def _run_job_when(settings, job_id: str, ready: threading.Event) -> threading.Thread:
    """Claim, process with two progress reports and succeed, once ``ready`` is set."""

    def run() -> None:
        assert ready.wait(60)
        with session_scope(settings.database_url) as session:
            fence = states.claim(session, job_id, "test-worker")
        mark_processing(settings, fence)
        storage = open_storage(settings.storage_url, settings)
        reporter = ProgressReporter(fence, settings, storage)
        for step in (5, 10):
            reporter.report(current=step, total=10, stage="scale 1/1", loss=1.0, force=True)
        with session_scope(settings.database_url) as session:
            assert states.transition(session, job_id, states.SUCCEEDED, fence=fence)
        events.notify(settings, job_id, events.STATUS)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_status_wait_follows_the_event_stream(atelier, live_server, e2e_settings, monkeypatch):
    calls = Calls(monkeypatch)
    job_id = make_job(e2e_settings, status="queued")
    runner = _run_job_when(e2e_settings, job_id, calls.streamed)
    rc, out, err = atelier("status", job_id, "--wait", "--json", url=live_server)
    runner.join(30)
    assert rc == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert "100.0% succeeded" in err and "processing" in err
    assert calls.gets == 1  # the first read only: everything after came on the stream


@pytest.fixture
def streams_taken(live_server, e2e_settings):
    """Every stream slot of the live server held by another running job's streams."""
    other = make_job(e2e_settings, status="processing")
    held = []
    for _ in range(e2e_settings.max_streams):
        response = requests.get(f"{live_server}/api/v1/jobs/{other}/events", stream=True)
        assert response.status_code == 200
        held.append(response)
    yield
    with session_scope(e2e_settings.database_url) as session:
        states.transition(session, other, states.CANCELED)
    events.notify(e2e_settings, other, events.STATUS)  # their streams end at once
    for response in held:
        response.close()


def test_status_wait_polls_when_the_stream_is_refused(
    atelier, live_server, e2e_settings, monkeypatch, streams_taken
):
    calls = Calls(monkeypatch)
    job_id = make_job(e2e_settings, status="queued")
    runner = _run_job_when(e2e_settings, job_id, calls.polled)
    rc, out, err = atelier("status", job_id, "--wait", "--json", url=live_server)
    runner.join(30)
    assert rc == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert calls.refused.is_set() and not calls.streamed.is_set()
