"""Tokens, owner isolation on every endpoint, the page login, rate and quota limits."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from shared.db import session_scope
from shared.tokens import create_token
from tests.conftest import ROOT, settings_env, style_form
from web import create_app


def _token(settings, owner: str, role: str = "user") -> str:
    with session_scope(settings.database_url) as session:
        return create_token(session, owner, role)[1]


@pytest.fixture
def token_app(settings):
    return create_app({"ATELIER_SETTINGS": dataclasses.replace(settings, auth="token")})


def _login(client, token: str, query: str = ""):
    client.get("/login")  # sets the CSRF cookie
    csrf = client.get_cookie("atelier_csrf").value
    return client.post(f"/login{query}", data={"token": token, "csrf_token": csrf})


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_api_needs_a_valid_token(token_app, settings):
    client = token_app.test_client()
    for headers in ({}, _auth("atl_wrong"), {"Authorization": "Basic abc"}):
        response = client.get("/api/v1/jobs", headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/healthz").status_code in (200, 503)  # public
    assert client.get("/api/v1/jobs", headers=_auth(_token(settings, "ann"))).status_code == 200


def test_another_owners_job_is_404_everywhere(token_app, settings):
    client = token_app.test_client()
    ann, bob = _token(settings, "ann"), _token(settings, "bob")
    admin = _token(settings, "root", "admin")
    job = client.post(
        "/api/v1/jobs", data=style_form(), headers=_auth(ann), content_type="multipart/form-data"
    ).get_json()
    assert job["owner"] == "ann"
    job_id = job["id"]
    listed = client.get("/api/v1/jobs", headers=_auth(admin)).get_json()["results"]
    assert [j["id"] for j in listed] == [job_id]  # the admin sees every owner's jobs
    assert client.get("/api/v1/jobs", headers=_auth(bob)).get_json()["results"] == []
    for method, path in [
        ("get", f"/api/v1/jobs/{job_id}"),
        ("get", f"/api/v1/jobs/{job_id}/files/content.png"),
        ("post", f"/api/v1/jobs/{job_id}/cancel"),
        ("delete", f"/api/v1/jobs/{job_id}"),
    ]:
        response = getattr(client, method)(path, headers=_auth(bob))
        assert response.status_code == 404, (method, path)
        assert response.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/v1/jobs/{job_id}", headers=_auth(ann)).get_json()["status"] == "queued"
    with client.get(f"/api/v1/jobs/{job_id}/files/content.png", headers=_auth(admin)) as file:
        assert file.status_code == 200
    # pages: bob logs in and still sees nothing of ann's
    assert _login(client, bob).status_code == 303
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_pages_need_a_login_and_revocation_ends_it(token_app, settings):
    client = token_app.test_client()
    first = client.get("/")
    assert first.status_code == 302 and "/login" in first.headers["Location"]
    assert _login(client, "atl_nope").status_code == 401
    assert client.post("/login", data={"token": "atl_nope"}).status_code == 400  # no CSRF
    token = _token(settings, "ann")
    response = _login(client, token, "?next=/")
    assert response.status_code == 303 and response.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200 and "Sign out" in page.get_data(as_text=True)
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    revoke = subprocess.run(
        [sys.executable, "-m", "worker.cli", "token", "revoke", token],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert revoke.returncode == 0, revoke.stderr
    assert client.get("/").status_code == 302
    assert client.get("/api/v1/jobs", headers=_auth(token)).status_code == 401


def test_token_cli_creates_and_lists(settings):
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "worker.cli", "token", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    created = run("create", "carol", "--admin")
    assert created.returncode == 0 and created.stdout.startswith("atl_")
    listing = run("list").stdout
    assert "carol" in listing and "admin" in listing and created.stdout.strip() not in listing
    assert run("create", "bad owner!").returncode == 2


def test_submit_rate_limit_answers_429_with_retry_after(settings):
    limited = dataclasses.replace(settings, submit_rate_per_minute=2)
    client = create_app({"ATELIER_SETTINGS": limited}).test_client()
    codes = [
        client.post("/api/v1/jobs", data=style_form(), content_type="multipart/form-data")
        for _ in range(3)
    ]
    assert [r.status_code for r in codes] == [202, 202, 429]
    assert codes[2].get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(codes[2].headers["Retry-After"]) <= 60


def test_active_job_quota_and_global_queue_cap(settings):
    capped = dataclasses.replace(settings, max_active_per_owner=1)
    client = create_app({"ATELIER_SETTINGS": capped}).test_client()

    def post():
        return client.post(
            "/api/v1/jobs",
            data=style_form(),
            content_type="multipart/form-data",
        )

    assert post().status_code == 202
    over = post()
    assert over.status_code == 429 and over.headers["Retry-After"]
    assert over.get_json()["error"]["code"] == "quota_exceeded"
    full = dataclasses.replace(settings, max_queued_total=1)
    response = (
        create_app({"ATELIER_SETTINGS": full})
        .test_client()
        .post("/api/v1/jobs", data=style_form(), content_type="multipart/form-data")
    )
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "queue_full"


def test_idempotency_key_returns_the_first_job(client):
    headers = {"Idempotency-Key": "order-42"}
    first = client.post(
        "/api/v1/jobs", data=style_form(), headers=headers, content_type="multipart/form-data"
    )
    again = client.post(
        "/api/v1/jobs",
        data=style_form(size="64"),
        headers=headers,
        content_type="multipart/form-data",
    )
    assert first.status_code == 202 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    other = client.post(
        "/api/v1/jobs",
        data=style_form(),
        headers={"Idempotency-Key": "order-43"},
        content_type="multipart/form-data",
    )
    assert other.status_code == 202 and other.get_json()["id"] != first.get_json()["id"]
    assert len(client.get("/api/v1/jobs").get_json()["results"]) == 2
    too_long = client.post(
        "/api/v1/jobs",
        data=style_form(),
        headers={"Idempotency-Key": "k" * 300},
        content_type="multipart/form-data",
    )
    assert too_long.status_code == 400


@pytest.mark.parametrize(
    ("webhook", "events"),
    [
        ("http://127.0.0.1:9/hook", None),  # loopback
        ("http://10.1.2.3/hook", None),  # private
        ("http://169.254.169.254/latest", None),  # link-local metadata
        ("ftp://example.com/x", None),
        ("http://user:pw@93.184.216.34/x", None),
        ("http://93.184.216.34/x", "start,finished"),
        ("", "start"),
    ],
)
def test_bad_webhooks_are_refused_at_submit(client, webhook, events):
    fields = {"webhook": webhook} | ({"webhook_events": events} if events else {})
    response = client.post(
        "/api/v1/jobs", data=style_form(**fields), content_type="multipart/form-data"
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] in ("webhook", "webhook_events")
    assert client.get("/api/v1/jobs").get_json()["results"] == []
