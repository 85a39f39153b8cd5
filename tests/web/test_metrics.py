"""``/metrics``: Prometheus text read from the jobs table and Redis, the same from any process."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from shared.db import session_scope
from shared.jobs import add_job, new_job_id
from shared.timeutil import utcnow
from tests.conftest import BACKENDS, tiny_png


def scrape(client) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}; parsing fails on anything not Prometheus text."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _job(session, *, status, kind="style_transfer", wait=None, run=None, heartbeat_age=None):
    """A job row with chosen timings (seconds) relative to now."""
    now = utcnow()
    job = add_job(session, job_id=new_job_id(), kind=kind, owner="local", params={}, files=[])
    job.status = status
    job.created_at = now - timedelta(seconds=(wait or 0) + (run or 0) + 1)
    if wait is not None:
        job.started_at = job.created_at + timedelta(seconds=wait)
    if run is not None:
        job.finished_at = job.started_at + timedelta(seconds=run)
    if heartbeat_age is not None:
        job.heartbeat_at = now - timedelta(seconds=heartbeat_age)
    return job


@pytest.mark.parametrize("fresh_db_url", BACKENDS, indirect=True)
def test_counts_gauges_and_histograms_come_from_the_rows(app, client, settings):
    with session_scope(settings.database_url) as session:
        _job(session, status="succeeded", wait=2, run=40)
        _job(session, status="succeeded", wait=0.02, run=3)
        _job(session, status="failed", wait=10, run=200)
        _job(session, status="canceled")  # canceled while queued: never started
        _job(session, status="canceled", kind="fine_tune", wait=1, run=7)
        _job(session, status="queued")
        _job(session, status="processing", wait=0.5, heartbeat_age=2)  # busy
        _job(session, status="starting", wait=0.5, heartbeat_age=3600)  # its worker vanished
    m = scrape(client)
    assert m[("atelier_jobs_submitted_total", (("kind", "style_transfer"),))] == 7
    assert m[("atelier_jobs_submitted_total", (("kind", "fine_tune"),))] == 1
    finished = (
        "atelier_jobs_finished_total",
        (("kind", "style_transfer"), ("status", "succeeded")),
    )
    assert m[finished] == 2
    assert m[("atelier_jobs_current", (("kind", "style_transfer"), ("status", "queued")))] == 1
    assert m[("atelier_workers_busy", ())] == 1
    assert m[("atelier_jobs_stale", ())] == 1

    def bucket(name, le, **labels):
        return m[(f"{name}_bucket", tuple(sorted({**labels, "le": le}.items())))]

    wait = "atelier_job_wait_seconds"
    assert m[(f"{wait}_count", (("kind", "style_transfer"),))] == 5  # every started job
    assert bucket(wait, "0.05", kind="style_transfer") == 1
    assert bucket(wait, "1.0", kind="style_transfer") == 3
    assert bucket(wait, "5.0", kind="style_transfer") == 4
    assert bucket(wait, "+Inf", kind="style_transfer") == 5
    assert m[(f"{wait}_sum", (("kind", "style_transfer"),))] == pytest.approx(13.02, abs=0.05)

    run = "atelier_job_run_seconds"
    ok = {"kind": "style_transfer", "status": "succeeded"}
    assert bucket(run, "1.0", **ok) == 0
    assert bucket(run, "5.0", **ok) == 1
    assert bucket(run, "60.0", **ok) == 2
    assert m[(f"{run}_sum", tuple(sorted(ok.items())))] == pytest.approx(43, abs=0.05)
    assert bucket(run, "120.0", kind="style_transfer", status="failed") == 0
    assert bucket(run, "300.0", kind="style_transfer", status="failed") == 1
    assert m[("atelier_up", (("component", "database"),))] == 1


def test_queue_depth_is_the_redis_list_length_and_any_process_agrees(app, client, settings):
    from web import create_app

    broker = redis.Redis.from_url(settings.redis_url)
    before = scrape(client)
    depth = ("atelier_queue_depth", (("queue", "gpu"),))
    assert before[depth] == broker.llen("gpu")
    for _ in range(2):
        response = client.post(
            "/api/v1/jobs",
            data={
                "kind": "style_transfer",
                "content": (io.BytesIO(tiny_png()), "c.png"),
                "style": (io.BytesIO(tiny_png(color=(0, 0, 200))), "s.png"),
            },
        )
        assert response.status_code == 202
    after = scrape(client)
    assert after[depth] == before[depth] + 2
    assert after[("atelier_queue_depth", (("queue", "cpu"),))] == broker.llen("cpu")
    assert after[("atelier_up", (("component", "redis"),))] == 1
    # a second app (another gunicorn worker) has never seen these submits, yet agrees
    other = create_app({"ATELIER_SETTINGS": settings, "TESTING": True}).test_client()
    again = scrape(other)
    for key in (depth, ("atelier_jobs_submitted_total", (("kind", "style_transfer"),))):
        assert again[key] == after[key]
    broker.delete("gpu")  # leave no messages for a later test's worker


def test_a_redis_outage_still_answers_with_database_numbers(settings):
    import dataclasses

    from web import create_app

    down = dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0")
    m = scrape(create_app({"ATELIER_SETTINGS": down, "TESTING": True}).test_client())
    assert m[("atelier_up", (("component", "redis"),))] == 0
    assert m[("atelier_up", (("component", "database"),))] == 1
    assert not any(name == "atelier_queue_depth" for name, _ in m)
