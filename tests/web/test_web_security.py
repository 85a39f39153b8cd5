"""The browser-facing promises of the security model: redirects, CSRF on the API, Host names,
cookies and response headers. Each test names the attack it stops."""

from __future__ import annotations

import dataclasses
import io
import re

import pytest
from sqlalchemy import func, select

from shared.db import session_scope
from shared.hosts import LOOPBACK_HOSTS, export_trusted_hosts, names_for_bind
from shared.models import Job
from shared.tokens import create_token
from tests.conftest import tiny_png
from tests.web.helpers import as_json, csrf_token, make_job
from web import create_app
from web.security import safe_redirect_target

EVIL = "evil.example"


def _token(settings, owner: str = "ann") -> str:
    with session_scope(settings.database_url) as session:
        return create_token(session, owner, "user")[1]


def _jobs(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def _style_form(**extra):
    return {
        "kind": "style_transfer",
        "content": (io.BytesIO(tiny_png()), "c.png"),
        "style": (io.BytesIO(tiny_png()), "s.png"),
        "size": "48",
        **extra,
    }


@pytest.fixture
def token_app(settings):
    return create_app({"ATELIER_SETTINGS": dataclasses.replace(settings, auth="token")})


def _logged_in(app, settings):
    client = app.test_client()
    token = csrf_token_for_login(client)
    response = client.post("/login", data={"token": _token(settings), "csrf_token": token})
    assert response.status_code == 303
    return client, client.get_cookie("atelier_csrf").value


def csrf_token_for_login(client) -> str:
    client.get("/login")
    return client.get_cookie("atelier_csrf").value


# --- 4. open redirect after login -------------------------------------------------------

HOSTILE_NEXT = [
    "/%09/evil.example",  # a tab: browsers drop it, leaving //evil.example
    "/%0A/evil.example",
    "/%0D%0A/evil.example",
    "/%5Cevil.example",  # a backslash: browsers read it as a slash
    "%5C%5Cevil.example",
    "//evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "/%00/evil.example",
    "%20//evil.example",
]


@pytest.mark.parametrize("hostile", HOSTILE_NEXT)
def test_login_never_redirects_to_another_site(token_app, settings, hostile):
    client = token_app.test_client()
    csrf = csrf_token_for_login(client)
    response = client.post(
        f"/login?next={hostile}", data={"token": _token(settings), "csrf_token": csrf}
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_login_keeps_a_same_site_next(token_app, settings):
    client = token_app.test_client()
    csrf = csrf_token_for_login(client)
    response = client.post(
        "/login?next=/jobs%3Fstatus%3Dsucceeded",
        data={"token": _token(settings), "csrf_token": csrf},
    )
    assert response.headers["Location"] == "/jobs?status=succeeded"


def test_delete_button_next_is_same_site_only(client, settings):
    token = csrf_token(client)
    for hostile in ("/\t/evil.example", "/\\evil.example", "https://evil.example"):
        job_id = make_job(settings, status="succeeded")
        response = client.post(
            f"/jobs/{job_id}/delete", data={"csrf_token": token, "next": hostile}
        )
        assert response.status_code == 303 and response.headers["Location"] == "/jobs"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/jobs?kind=predict", "/jobs?kind=predict"),
        ("/\t/evil.example", "/fallback"),
        ("/\\evil.example", "/fallback"),
        ("\u2028//evil.example", "/fallback"),
        (None, "/fallback"),
        ("", "/fallback"),
    ],
)
def test_safe_redirect_target(raw, expected):
    assert safe_redirect_target(raw, "/fallback") == expected


# --- 5. CSRF through the JSON API --------------------------------------------------------


def test_cookie_authenticated_api_calls_need_the_csrf_header(token_app, settings):
    client, token = _logged_in(token_app, settings)
    refused = client.post("/api/v1/jobs", data=_style_form(), content_type="multipart/form-data")
    assert refused.status_code == 403
    assert refused.json["error"]["field"] == "X-CSRF-Token"
    assert _jobs(settings) == 0
    accepted = client.post(
        "/api/v1/jobs",
        data=_style_form(),
        content_type="multipart/form-data",
        headers={"X-CSRF-Token": token},
    )
    assert accepted.status_code == 202, accepted.json
    job_id = accepted.json["id"]
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 403
    assert client.get(f"/api/v1/jobs/{job_id}").json["status"] == "queued"
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 403
    canceled = client.post(f"/api/v1/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token})
    assert canceled.json["status"] == "canceled"


def test_bearer_calls_need_no_csrf_token(token_app, settings):
    client = token_app.test_client()
    headers = {"Authorization": f"Bearer {_token(settings)}", "Origin": "https://evil.example"}
    response = client.post(
        "/api/v1/jobs", data=_style_form(), content_type="multipart/form-data", headers=headers
    )
    assert response.status_code == 202
    cancel = client.post(f"/api/v1/jobs/{response.json['id']}/cancel", headers=headers)
    assert cancel.json["status"] == "canceled"


@pytest.mark.parametrize(
    "browser_headers",
    [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}],
)
def test_auth_off_refuses_browser_api_calls_without_the_token(client, settings, browser_headers):
    running = make_job(settings, status="processing")
    response = client.post(
        "/api/v1/jobs",
        data=_style_form(),
        content_type="multipart/form-data",
        headers=browser_headers,
    )
    assert response.status_code == 403 and response.json["error"]["code"] == "csrf_failed"
    assert client.post(f"/api/v1/jobs/{running}/cancel", headers=browser_headers).status_code == 403
    assert _jobs(settings) == 1  # only the running job made above
    assert client.get(f"/api/v1/jobs/{running}").json["cancel_requested_at"] is None


def test_auth_off_scripts_and_the_page_script_still_work(client):
    plain = client.post("/api/v1/jobs", data=_style_form(), content_type="multipart/form-data")
    assert plain.status_code == 202  # curl sends neither Origin nor Sec-Fetch-Site
    token = csrf_token(client)
    page_like = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    cancel = client.post(
        f"/api/v1/jobs/{plain.json['id']}/cancel", headers={**page_like, "X-CSRF-Token": token}
    )
    assert cancel.status_code == 200 and cancel.json["status"] == "canceled"


# --- 5. DNS rebinding: Host names with auth off -------------------------------------------


def test_auth_off_answers_only_to_trusted_host_names(client, settings):
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        assert client.get("/api/v1/jobs", headers={"Host": host}).status_code == 200, host
    for host in (EVIL, f"{EVIL}:8000", "127.0.0.1.evil.example", ""):
        response = client.get("/api/v1/jobs", headers={"Host": host})
        assert response.status_code == 400, host
        assert response.json["error"]["field"] == "Host"
    refused = client.post(
        "/api/v1/jobs",
        data=_style_form(),
        content_type="multipart/form-data",
        headers={"Host": EVIL},
    )
    assert refused.status_code == 400 and _jobs(settings) == 0
    page = client.get("/", headers={"Host": EVIL})
    assert page.status_code == 400 and b"ATELIER_TRUSTED_HOSTS" in page.data


def test_trusted_hosts_setting_adds_names_and_token_auth_needs_none(settings):
    listed = create_app(
        {"ATELIER_SETTINGS": dataclasses.replace(settings, trusted_hosts="atelier.lan, 10.0.0.5")}
    ).test_client()
    assert listed.get("/healthz", headers={"Host": "atelier.lan"}).status_code in (200, 503)
    assert listed.get("/api/v1/jobs", headers={"Host": "10.0.0.5:8000"}).status_code == 200
    assert listed.get("/api/v1/jobs", headers={"Host": "localhost"}).status_code == 400
    behind_proxy = create_app({"ATELIER_SETTINGS": dataclasses.replace(settings, auth="token")})
    response = behind_proxy.test_client().get("/login", headers={"Host": "atelier.example.org"})
    assert response.status_code == 200


def test_the_launcher_trusts_what_it_binds():
    env: dict[str, str] = {}
    export_trusted_hosts("192.168.7.9", env)
    assert env["ATELIER_TRUSTED_HOSTS"].split(",") == [*LOOPBACK_HOSTS, "192.168.7.9"]
    kept = {"ATELIER_TRUSTED_HOSTS": "mine.example"}
    export_trusted_hosts("0.0.0.0", kept)
    assert kept["ATELIER_TRUSTED_HOSTS"] == "mine.example"
    token_auth = {"ATELIER_AUTH": "token"}
    export_trusted_hosts("0.0.0.0", token_auth)
    assert "ATELIER_TRUSTED_HOSTS" not in token_auth
    wildcard = names_for_bind("0.0.0.0")
    assert wildcard and "0.0.0.0" not in wildcard


# --- 5. Secure cookies behind https -------------------------------------------------------


def test_cookies_are_secure_when_the_public_url_is_https(settings):
    https = dataclasses.replace(settings, auth="token", public_url="https://atelier.example.org")
    app = create_app({"ATELIER_SETTINGS": https})
    client = app.test_client()
    first = client.get("/login")
    assert "Secure" in first.headers["Set-Cookie"]  # the CSRF cookie
    csrf = client.get_cookie("atelier_csrf").value
    login = client.post("/login", data={"token": _token(settings), "csrf_token": csrf})
    session_cookie = next(c for c in login.headers.getlist("Set-Cookie") if "session=" in c)
    assert "Secure" in session_cookie and "HttpOnly" in session_cookie
    plain = create_app({"ATELIER_SETTINGS": dataclasses.replace(settings, auth="token")})
    assert "Secure" not in plain.test_client().get("/login").headers["Set-Cookie"]


# --- 6. security headers ------------------------------------------------------------------


def test_every_response_says_nosniff_and_pages_carry_a_csp(client, settings):
    job_id = make_job(
        settings,
        files={"result.png": ("output", tiny_png()), "metrics.json": ("output", as_json({}))},
    )
    responses = {
        "page": client.get("/"),
        "job page": client.get(f"/jobs/{job_id}"),
        "gallery": client.get("/jobs"),
        "api": client.get("/api/v1/jobs"),
        "openapi": client.get("/api/v1/openapi.json"),
        "static": client.get("/static/app.css"),
        "json 404": client.get("/api/v1/jobs/" + "0" * 32),
        "page 404": client.get("/nowhere"),
        "file": client.get(f"/api/v1/jobs/{job_id}/files/result.png"),
        "health": client.get("/healthz"),
        "metrics": client.get("/metrics"),
    }
    for name, response in responses.items():
        assert response.headers.get("X-Content-Type-Options") == "nosniff", name
        assert response.headers.get("Referrer-Policy") == "same-origin", name
        response.close()
    for name in ("page", "job page", "gallery", "page 404"):
        csp = responses[name].headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, name
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, name
        assert re.search(r"script-src 'self'(;|$)", csp), name


def test_pages_contain_no_inline_script(client, settings):
    job_id = make_job(settings, files={"result.png": ("output", tiny_png())})
    for path in ("/", "/jobs", f"/jobs/{job_id}", "/docs"):
        html = client.get(path).get_data(as_text=True)
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag, (path, tag)
        assert not re.search(r"\son[a-z]+\s*=", html), path


def test_stored_files_other_than_images_are_attachments(client, settings):
    job_id = make_job(
        settings,
        files={
            "result.png": ("output", tiny_png()),
            "metrics.json": ("output", as_json({"<script>": 1})),
        },
    )
    with client.get(f"/api/v1/jobs/{job_id}/files/result.png") as image:
        assert image.headers["Content-Disposition"].startswith("inline")
    with client.get(f"/api/v1/jobs/{job_id}/files/metrics.json") as data:
        assert data.headers["Content-Disposition"].startswith("attachment")


# --- found by review: planted cookies, odd Host values, header and address edges -------


def test_a_planted_cookie_does_not_beat_the_token_from_another_origin(token_app, settings):
    client, _token_value = _logged_in(token_app, settings)
    planted = "A" * 43  # what a sibling subdomain or plain-http page can set
    client.set_cookie("atelier_csrf", planted)
    job_id = make_job(settings, status="processing", owner="ann")
    for cross in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "same-site"}):
        form = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": planted}, headers=cross)
        assert form.status_code == 400, cross
        api = client.post(
            f"/api/v1/jobs/{job_id}/cancel", headers={**cross, "X-CSRF-Token": planted}
        )
        assert api.status_code == 403, cross
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).cancel_requested_at is None
    same_origin = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    ok = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": planted}, headers=same_origin)
    assert ok.status_code == 303


@pytest.mark.parametrize("host", ["[::1]evil.example", "localhost:evil", "[::1]:80:80", "a b"])
def test_host_values_that_are_not_a_name_and_port_are_refused(client, host):
    assert client.get("/api/v1/jobs", headers={"Host": host}).status_code == 400


def test_idempotency_keys_with_control_characters_are_refused(client, settings):
    response = client.post(
        "/api/v1/jobs",
        data=_style_form(),
        content_type="multipart/form-data",
        headers={"Idempotency-Key": "key\x01"},
    )
    assert response.status_code == 400
    assert response.json["error"]["field"] == "Idempotency-Key"
    assert _jobs(settings) == 0


@pytest.mark.parametrize("address", ["192.0.0.192", "192.0.0.1", "192.0.0.255"])
def test_special_purpose_webhook_addresses_are_refused(address):
    from ipaddress import ip_address

    from shared.webhooks import refusal

    assert refusal(ip_address(address))
