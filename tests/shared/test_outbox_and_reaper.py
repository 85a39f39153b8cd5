"""No job lost: a submit while Redis is down is published later; stale jobs are reaped."""

from __future__ import annotations

import dataclasses
import io
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update

from shared import states
from shared.db import session_scope
from shared.housekeeping import pending_dispatch, reap_stale
from shared.jobs import add_job, new_job_id
from shared.models import Job
from shared.timeutil import utcnow
from tests.conftest import BACKENDS, tiny_png
from worker.dispatcher import make_sender, sweep_once
from worker.embedded import free_port


def test_submit_while_broker_down_is_accepted_then_dispatched(settings):
    from web import create_app

    down = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = create_app({"ATELIER_SETTINGS": down, "TESTING": True}).test_client()
    response = client.post(
        "/api/v1/jobs",
        data={
            "kind": "style_transfer",
            "content": (io.BytesIO(tiny_png()), "c.png"),
            "style": (io.BytesIO(tiny_png()), "s.png"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 202
    job_id = response.get_json()["id"]
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).values(created_at=utcnow() - timedelta(seconds=30)))
        assert pending_dispatch(session) == [(job_id, "style_transfer")]

    broker = redis.Redis.from_url(settings.redis_url)
    before = broker.llen("gpu")
    sent = sweep_once(settings, make_sender(settings))
    assert sent == 1 and broker.llen("gpu") == before + 1
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).enqueued_at is not None
        assert pending_dispatch(session) == []
    broker.delete("gpu")


def _running_job(url: str, attempts: int) -> str:
    job_id = new_job_id()
    with session_scope(url) as session:
        add_job(session, job_id=job_id, kind="style_transfer", owner="local", params={}, files=[])
    with session_scope(url) as session:
        states.claim(session, job_id, "gone-worker")
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(attempts=attempts, heartbeat_at=utcnow() - timedelta(seconds=120))
        )
    return job_id


@pytest.mark.parametrize("fresh_db_url", BACKENDS, indirect=True)
def test_reaper_requeues_then_gives_up(settings):
    url = settings.database_url
    retry, exhausted = _running_job(url, attempts=1), _running_job(url, attempts=3)
    fresh = _running_job(url, attempts=1)
    with session_scope(url) as session:
        session.execute(update(Job).where(Job.id == fresh).values(heartbeat_at=utcnow()))
    with session_scope(url) as session:
        moved = dict(reap_stale(session, timeout_seconds=60, max_attempts=3))
    assert moved == {retry: "queued", exhausted: "failed"}
    with session_scope(url) as session:
        requeued = session.get(Job, retry)
        assert requeued.enqueued_at is None and requeued.worker is None
        failed = session.get(Job, exhausted)
        assert failed.error_code == "attempts_exhausted" and failed.finished_at
        assert session.get(Job, fresh).status == "starting"


def test_retention_deletes_old_finished_jobs_and_their_files(settings):
    from shared.storage import job_key, open_storage
    from worker.dispatcher import delete_expired

    storage = open_storage(settings.storage_url)
    url = settings.database_url
    old, recent, running = new_job_id(), new_job_id(), new_job_id()
    with session_scope(url) as session:
        for job_id in (old, recent, running):
            add_job(
                session, job_id=job_id, kind="style_transfer", owner="local", params={}, files=[]
            )
            storage.put_bytes(job_key(job_id, "result.png"), b"png")
    with session_scope(url) as session:
        long_ago = utcnow() - timedelta(days=30)
        session.execute(
            update(Job)
            .where(Job.id.in_([old, recent]))
            .values(status="succeeded", finished_at=utcnow())
        )
        session.execute(update(Job).where(Job.id == old).values(finished_at=long_ago))
        session.execute(
            update(Job).where(Job.id == running).values(status="processing", created_at=long_ago)
        )
    assert delete_expired(dataclasses.replace(settings, result_ttl=7 * 24 * 3600)) == 1
    with session_scope(url) as session:
        assert session.get(Job, old) is None
        assert session.get(Job, recent) is not None and session.get(Job, running) is not None
    assert not storage.exists(job_key(old, "result.png"))
    assert storage.exists(job_key(recent, "result.png"))
    assert delete_expired(dataclasses.replace(settings, result_ttl=0)) == 0  # 0 keeps forever


def test_a_message_lost_by_redis_is_published_again(settings):
    from worker.dispatcher import republish_lost

    broker = redis.Redis.from_url(settings.redis_url)
    send = make_sender(settings)
    job_id = new_job_id()
    with session_scope(settings.database_url) as session:
        add_job(session, job_id=job_id, kind="style_transfer", owner="local", params={}, files=[])
    send("atelier.run_job", [job_id], "gpu")
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).values(enqueued_at=utcnow() - timedelta(seconds=60)))
    assert republish_lost(settings, send) == 0  # its message is still there
    broker.delete("gpu")  # what a Redis restart without persistence does
    assert republish_lost(settings, send) == 1
    assert broker.llen("gpu") == 1
    assert republish_lost(settings, send, older_than=30) == 0  # just republished
    broker.delete("gpu")
