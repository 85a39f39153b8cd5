"""Queue administration is for admins; ``priority`` is bounded at submit, above 5 for
admins only; pause keeps jobs queued and unpublished, resume publishes them again."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import redis
from sqlalchemy import func, select
from werkzeug.serving import make_server

from shared.db import session_scope
from shared.models import Job
from shared.tokens import create_token
from tests.conftest import style_form
from web import create_app


def _token(settings, owner: str, role: str = "user") -> dict[str, str]:
    with session_scope(settings.database_url) as session:
        return {"Authorization": f"Bearer {create_token(session, owner, role)[1]}"}


@pytest.fixture
def token_client(settings):
    app = create_app({"ATELIER_SETTINGS": dataclasses.replace(settings, auth="token")})
    return app.test_client()


def _submit(client, headers, **fields):
    return client.post(
        "/api/v1/jobs",
        data=style_form(**fields),
        headers=headers,
        content_type="multipart/form-data",
    )


def _jobs(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_only_admins_see_pause_and_resume_queues(token_client, settings):
    user, admin = _token(settings, "ann"), _token(settings, "root", "admin")
    for method, path in (
        ("get", "/api/v1/queues"),
        ("post", "/api/v1/queues/gpu/pause"),
        ("post", "/api/v1/queues/gpu/resume"),
    ):
        refused = getattr(token_client, method)(path, headers=user)
        assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
        assert getattr(token_client, method)(path).status_code == 401
    listed = token_client.get("/api/v1/queues", headers=admin).get_json()["queues"]
    assert {q["name"]: q["paused"] for q in listed} == {"cpu": False, "gpu": False}
    for _ in range(2):  # idempotent
        paused = token_client.post("/api/v1/queues/gpu/pause", headers=admin).get_json()
        assert paused["paused"] and paused["paused_by"] == "root" and paused["paused_at"]
    for _ in range(2):
        resumed = token_client.post("/api/v1/queues/gpu/resume", headers=admin).get_json()
        assert resumed == {**resumed, "paused": False, "paused_at": None, "paused_by": None}
    for name in ("nope", "g" * 200):
        missing = token_client.post(f"/api/v1/queues/{name}/pause", headers=admin)
        assert missing.status_code == 404 and missing.get_json()["error"]["field"] == "queue"


def test_priority_is_bounded_and_above_five_is_for_admins(token_client, settings):
    user, admin = _token(settings, "ann"), _token(settings, "root", "admin")
    for bad in ("10", "-1", "high", "4.5"):
        refused = _submit(token_client, user, priority=bad)
        assert refused.status_code == 400, bad
        assert refused.get_json()["error"]["field"] == "priority"
    above = _submit(token_client, user, priority="6")
    assert above.status_code == 403 and above.get_json()["error"]["field"] == "priority"
    assert _jobs(settings) == 0  # a refused submit leaves no job
    plain = _submit(token_client, user).get_json()
    low = _submit(token_client, user, priority="0").get_json()
    urgent = _submit(token_client, admin, priority="9").get_json()
    ids = [plain["id"], low["id"], urgent["id"]]
    with session_scope(settings.database_url) as session:
        assert [session.get(Job, job_id).priority for job_id in ids] == [5, 0, 9]
    # the admin's urgent job is first in the gpu queue, the user's priority 0 job last
    positions = [
        token_client.get(f"/api/v1/jobs/{job_id}", headers=admin).get_json()["queue_position"]
        for job_id in ids
    ]
    assert positions == [2, 3, 1]


def test_pause_keeps_jobs_unpublished_and_resume_publishes_them(client, settings):
    broker = redis.Redis.from_url(settings.redis_url)
    job_id = client.post(
        "/api/v1/jobs", data=style_form(), content_type="multipart/form-data"
    ).get_json()["id"]
    assert client.post("/api/v1/queues/gpu/pause").get_json()["paused"]  # auth off: operator
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.status == "queued" and job.enqueued_at is None
    waiting = broker.llen("gpu")
    state = client.get("/api/v1/queues").get_json()["queues"]
    assert {q["name"]: (q["paused"], q["queued"]) for q in state} == {
        "cpu": (False, 0),
        "gpu": (True, 1),
    }
    assert not client.post("/api/v1/queues/gpu/resume").get_json()["paused"]
    assert broker.llen("gpu") == waiting + 1  # published again at once
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).enqueued_at is not None
    broker.delete("gpu")


@pytest.fixture
def served(app):
    """The app on a real socket, for the command-line client."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


def test_the_queue_command_pauses_resumes_and_shows(served, capsys, monkeypatch):
    from worker.cli import build_parser

    monkeypatch.delenv("ATELIER_TOKEN", raising=False)

    def atelier(*argv: str) -> tuple[int, str, str]:
        args = build_parser().parse_args([*argv[:2], "--url", served, *argv[2:]])
        rc = args.func(args)
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, out, _ = atelier("queue", "pause", "gpu")
    assert rc == 0 and out.startswith("gpu") and "paused by local" in out
    rc, out, _ = atelier("queue", "status", "--json")
    assert rc == 0 and {q["name"]: q["paused"] for q in json.loads(out)} == {
        "cpu": False,
        "gpu": True,
    }
    rc, out, _ = atelier("queue", "resume", "gpu")
    assert rc == 0 and "running" in out and "paused" not in out
    rc, _, err = atelier("queue", "pause", "nope")
    assert rc == 2 and "queue" in err and "nope" in err
