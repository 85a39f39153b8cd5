"""What ``/healthz``, ``/metrics`` and a job read cost, measured on real parts.

SQL statements are counted with an event listener on the real engine, Redis commands with
the real server's ``MONITOR`` (only this test's database), CPU with ``process_time``;
workers are real Celery processes. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import redis
from flask import url_for
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, insert, update

from shared.db import get_engine, session_scope
from shared.jobs import StoredFile, add_file, add_job, new_job_id
from shared.models import Job
from shared.timeutil import utcnow
from shared.tokens import create_token
from shared.workers import KEY_TTL_SECONDS, Beacon, Offer, count_live, device_of, worker_key
from tests.conftest import style_form, wait_for
from web import create_app
from web.serializers import job_to_dict

CALLS = 50
CALLS_PER_SECOND = 10
CPU_BUDGET_S = 0.005


@contextmanager
def sql_statements(database_url: str) -> Iterator[list[str]]:
    """Every statement the process sends to this database while the block runs.

    They are counted below SQLAlchemy, at psycopg's cursor or by SQLite's own trace of
    each pooled connection: the job read runs on the driver's cursor directly
    (shared.jobs). The pool's liveness pings of idle connections are not the code's
    statements and are left out.
    """
    if database_url.startswith("postgresql"):
        yield from _psycopg_statements(get_engine(database_url))
        return
    engine = get_engine(database_url)
    seen: list[str] = []

    def trace(dbapi_connection, _record, _proxy) -> None:
        dbapi_connection.set_trace_callback(seen.append)

    def untrace(dbapi_connection, _record) -> None:
        dbapi_connection.set_trace_callback(None)

    event.listen(engine, "checkout", trace)
    event.listen(engine, "checkin", untrace)
    try:
        yield seen
    finally:
        event.remove(engine, "checkout", trace)
        event.remove(engine, "checkin", untrace)


def _psycopg_statements(engine) -> Iterator[list[str]]:
    import psycopg

    seen: list[str] = []
    pinging = threading.local()
    original_execute, original_ping = psycopg.Cursor.execute, engine.dialect.do_ping

    def execute(self, query, *args, **kwargs):
        if not getattr(pinging, "active", False):
            seen.append(query if isinstance(query, str) else str(query))
        return original_execute(self, query, *args, **kwargs)

    def do_ping(dbapi_connection):
        pinging.active = True
        try:
            return original_ping(dbapi_connection)
        finally:
            pinging.active = False

    psycopg.Cursor.execute = execute
    engine.dialect.do_ping = do_ping
    try:
        yield seen
    finally:
        psycopg.Cursor.execute = original_execute
        del engine.dialect.do_ping


class RedisCommands:
    """The commands the Redis server runs on one database, as ``MONITOR`` reports them."""

    def __init__(self, url: str) -> None:
        self.db = int(url.rsplit("/", 1)[1])
        self.client = redis.Redis.from_url(url)
        self.marker = f"end-of-test-{uuid.uuid4().hex}"
        self.commands: list[str] = []
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        with self.client.monitor() as monitor:
            self._listening.set()
            for seen in monitor.listen():
                if self.marker in seen["command"]:
                    return
                if seen["db"] == self.db:
                    self.commands.append(seen["command"])

    def __enter__(self) -> RedisCommands:
        self._thread.start()
        assert self._listening.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.echo(self.marker)  # lets the reader stop after everything before it
        self._thread.join(10)
        self.client.close()

    def count(self, name: str) -> int:
        return sum(1 for command in self.commands if command.split(" ", 1)[0].upper() == name)


def _app(settings, **config):
    return create_app({"ATELIER_SETTINGS": settings, "TESTING": True, **config})


def _fill_jobs_table(settings, count: int = 2000) -> None:
    """A jobs table big enough that a GROUP BY per scrape shows (old jobs, all states)."""
    now = utcnow()
    statuses = ["succeeded", "failed", "canceled", "queued", "processing"]
    rows = []
    for i in range(count):
        created = now - timedelta(seconds=count - i)
        status = statuses[i % len(statuses)]
        started = created + timedelta(seconds=1) if status != "queued" else None
        finished = (
            created + timedelta(seconds=30)
            if status in {"succeeded", "failed", "canceled"}
            else None
        )
        rows.append(
            {
                "id": new_job_id(),
                "kind": "style_transfer" if i % 3 else "fine_tune",
                "owner": "local",
                "status": status,
                "params": {},
                "created_at": created,
                "started_at": started,
                "finished_at": finished,
                "heartbeat_at": started,
            }
        )
    with session_scope(settings.database_url) as session:
        session.execute(insert(Job), rows)


# --- /healthz --------------------------------------------------------------------------


def test_healthz_does_its_work_once_per_period(settings):
    client = _app(settings, HEALTHZ_CACHE_SECONDS=60).test_client()
    with sql_statements(settings.database_url) as sql, RedisCommands(settings.redis_url) as seen:
        answers = [client.get("/healthz") for _ in range(CALLS)]
    assert {a.status_code for a in answers} == {200}
    assert all(a.get_json() == {"db": "ok", "redis": "ok", "workers": 0} for a in answers)
    assert len(sql) == 1  # SELECT 1, once
    assert seen.count("PING") == 1
    assert seen.count("SCAN") == 1  # the workers, from their heartbeat keys
    assert seen.count("PUBLISH") == 0  # no broadcast ping to every worker


def test_healthz_reports_redis_down_without_counting_workers(settings):
    down = dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0")
    answer = _app(down).test_client().get("/healthz")
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["db"] == "ok" and body["redis"].startswith("down:") and body["workers"] == 0


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_cpu_per_call_at_ten_calls_a_second_is_under_5_ms(settings, path):
    """The steady state of a poller at 10 calls/s: the recomputations each cache period
    are averaged over the calls that reuse them, with the caches' default periods."""
    _fill_jobs_table(settings)
    client = _app(settings).test_client()
    used = 0.0
    for _ in range(CALLS):
        began_wall, began_cpu = time.monotonic(), time.process_time()
        assert client.get(path).status_code == 200
        used += time.process_time() - began_cpu
        time.sleep(max(0.0, 1 / CALLS_PER_SECOND - (time.monotonic() - began_wall)))
    assert used / CALLS < CPU_BUDGET_S, f"{1000 * used / CALLS:.2f} ms of CPU per call"


# --- /metrics ---------------------------------------------------------------------------


def test_metrics_run_the_group_bys_once_per_period(settings):
    _fill_jobs_table(settings, 50)
    client = _app(settings, METRICS_CACHE_SECONDS=60).test_client()
    with sql_statements(settings.database_url) as sql:
        first = client.get("/metrics").get_data(as_text=True)
    assert any("GROUP BY" in statement for statement in sql)
    with sql_statements(settings.database_url) as sql:
        later = [client.get("/metrics").get_data(as_text=True) for _ in range(CALLS - 1)]
    assert sql == []
    counted = [line for line in first.splitlines() if line.startswith("atelier_jobs_submitted")]
    assert counted and all(
        [line for line in text.splitlines() if line.startswith("atelier_jobs_submitted")] == counted
        for text in later
    )


def test_a_submit_through_this_process_shows_in_the_next_scrape(settings):
    client = _app(settings, METRICS_CACHE_SECONDS=60).test_client()
    assert _submitted(client) == 0
    assert client.post("/api/v1/jobs", data=style_form()).status_code == 202
    assert _submitted(client) == 1
    redis.Redis.from_url(settings.redis_url).delete("gpu")  # no message left for a worker


def _submitted(client) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "atelier_jobs_submitted_total"
    )


@pytest.mark.parametrize("auth", ["off", "token"])
def test_metrics_need_the_metrics_token_when_one_is_set(settings, auth):
    token = "metrics-" + uuid.uuid4().hex
    guarded = dataclasses.replace(settings, auth=auth, metrics_token=token)
    client = _app(guarded, METRICS_CACHE_SECONDS=60).test_client()
    allowed = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200 and "atelier_up" in allowed.get_data(as_text=True)
    with session_scope(settings.database_url) as session:
        api_token = create_token(session, "root", "admin")[1]
    refused_headers = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": token},
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer {api_token}"},  # an API token, even an admin's, is not it
    ]
    for headers in refused_headers:
        refused = client.get("/metrics", headers=headers)  # the cached answer stays behind it
        assert refused.status_code == 401, headers
        assert refused.get_json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert "atelier_" not in refused.get_data(as_text=True)


def test_metrics_stay_open_without_a_metrics_token(settings):
    assert _app(settings).test_client().get("/metrics").status_code == 200


# --- live workers -----------------------------------------------------------------------


def test_a_beacon_beats_with_a_time_to_live_and_a_clean_stop_removes_it(redis_url):
    client = redis.Redis.from_url(redis_url)
    hostname = f"beacon-{uuid.uuid4().hex[:8]}@test"
    assert count_live(client) == 0
    beacon = Beacon(client, hostname, interval=0.1).start()
    try:
        assert count_live(client) == 1
        assert 0 < client.ttl(worker_key(hostname)) <= KEY_TTL_SECONDS
    finally:
        beacon.stop()
    assert count_live(client) == 0


@pytest.mark.slow
@pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)
def test_healthz_counts_a_real_worker_until_it_is_killed(settings, start_worker):
    client = _app(settings, HEALTHZ_CACHE_SECONDS=0.2).test_client()

    def workers() -> int:
        return client.get("/healthz").get_json()["workers"]

    assert workers() == 0
    worker = start_worker()
    beat = redis.Redis.from_url(settings.redis_url).get(worker_key(worker.hostname))
    offer = Offer.from_value(beat)  # the node announces what it consumes and runs on
    assert offer is not None and set(offer.queues) == {"gpu", "cpu"}  # the fixture's queues
    assert offer.device == device_of(settings.device)
    assert wait_for(lambda: workers() == 1, timeout=10)
    worker.stop(signal.SIGKILL)  # no shutdown handler runs: the key must expire by itself
    assert wait_for(lambda: workers() == 0, timeout=KEY_TTL_SECONDS + 20)


# --- GET /api/v1/jobs/<id> --------------------------------------------------------------


def _job_with_files(settings, status: str, names: dict[str, str]) -> str:
    with session_scope(settings.database_url) as session:
        job = add_job(
            session,
            job_id=new_job_id(),
            kind="style_transfer",
            owner="local",
            params={"size": 64},
            files=[StoredFile(role, name, "image/png", 10) for name, role in names.items()],
        )
        job.status = status
        if status == "processing":
            job.progress_current, job.progress_total = 3, 10
            job.progress_history = [{"t": 0.5, "step": 3, "loss": 1.5}]
            job.started_at = utcnow()
        return job.id


def test_a_job_read_is_one_statement_and_matches_the_orm_serialiser(app, client, settings):
    odd = {"cont ent#1?.png": "content", "stÿle.png": "style"}
    queued = _job_with_files(settings, "queued", odd)
    running = _job_with_files(settings, "processing", odd)
    with session_scope(settings.database_url) as session:
        add_file(session, running, StoredFile("preview", "preview.jpg", "image/jpeg", 5))
        add_file(session, running, StoredFile("result", "result.png", "image/png", 7))
        add_file(session, running, StoredFile("thumbnail", "thumbnail.jpg", "image/jpeg", 3))
    bare = _job_with_files(settings, "queued", {})
    # the read pool's first connection, and SQLAlchemy's one look at a new server, first
    assert client.get(f"/api/v1/jobs/{bare}").status_code == 200
    for job_id in (queued, running, bare):
        with sql_statements(settings.database_url) as sql:
            answer = client.get(f"/api/v1/jobs/{job_id}")
        assert answer.status_code == 200
        assert len(sql) == 1, sql  # job, queue position and files in one query
        body = answer.get_json()
        with app.test_request_context(), session_scope(settings.database_url) as session:
            expected = job_to_dict(session, session.get(Job, job_id), history=True)
            urls = {n: url_for("api.get_file", job_id=job_id, name=n) for n in odd}
        assert body == expected
        for item in body["inputs"]:
            assert item["url"] == urls[item["name"]]
    assert client.get(f"/api/v1/jobs/{running}").get_json()["progress"]["history"]
    assert client.get(f"/api/v1/jobs/{new_job_id()}").status_code == 404


def test_queue_position_counts_older_queued_jobs_and_breaks_ties_by_id(client, settings):
    ids = [_job_with_files(settings, "queued", {}) for _ in range(3)]
    same_time = utcnow()
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id.in_(ids)).values(created_at=same_time))
    older_running = _job_with_files(settings, "processing", {})
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Job)
            .where(Job.id == older_running)
            .values(created_at=same_time - timedelta(seconds=5))
        )
    later = _job_with_files(settings, "queued", {})
    positions = {
        job_id: client.get(f"/api/v1/jobs/{job_id}").get_json()["queue_position"]
        for job_id in [*ids, older_running, later]
    }
    assert [positions[job_id] for job_id in sorted(ids)] == [1, 2, 3]
    assert positions[older_running] is None
    assert positions[later] == 4
