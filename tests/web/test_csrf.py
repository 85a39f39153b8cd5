"""HTML form posts need the CSRF token; the JSON API does not (it is for curl and scripts)."""

from __future__ import annotations

import io

from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Job
from tests.conftest import tiny_png
from tests.web.helpers import csrf_token, make_job


def _form(**extra):
    return {
        "kind": "style_transfer",
        "content": (io.BytesIO(tiny_png()), "c.png"),
        "style": (io.BytesIO(tiny_png()), "s.png"),
        **extra,
    }


def _count(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_pages_set_a_strict_cookie(client):
    response = client.get("/")
    cookie = response.headers["Set-Cookie"]
    assert "atelier_csrf=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    token = client.get_cookie("atelier_csrf").value
    assert f'name="csrf_token" value="{token}"' in response.get_data(as_text=True)
    assert "Set-Cookie" not in client.get("/").headers  # reused, not rotated per page


def test_form_post_without_or_with_a_wrong_token_is_refused(client, settings):
    for data in (_form(), _form(csrf_token="x" * 43)):
        client.get("/")
        response = client.post("/jobs", data=data, content_type="multipart/form-data")
        assert response.status_code == 400
        assert "reload the page" in response.get_data(as_text=True)
    assert _count(settings) == 0
    assert not list((settings.var_dir / "storage").glob("jobs/*"))


def test_form_post_from_another_browser_is_refused(app, settings):
    mine, theirs = app.test_client(), app.test_client()
    token = csrf_token(mine)
    csrf_token(theirs)  # the other browser has a cookie of its own
    response = theirs.post(
        "/jobs", data=_form(csrf_token=token), content_type="multipart/form-data"
    )
    assert response.status_code == 400 and _count(settings) == 0


def test_cancel_and_delete_buttons_need_the_token(client, settings):
    running = make_job(settings, status="processing")
    done = make_job(settings, status="succeeded")
    assert client.post(f"/jobs/{running}/cancel").status_code == 400
    assert client.post(f"/jobs/{done}/delete").status_code == 400
    assert client.get(f"/api/v1/jobs/{running}").json["cancel_requested_at"] is None
    assert client.get(f"/api/v1/jobs/{done}").status_code == 200


def test_the_json_api_needs_no_token(client):
    response = client.post(
        "/api/v1/jobs", data=_form(size="48"), content_type="multipart/form-data"
    )
    assert response.status_code == 202
    job_id = response.json["id"]
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").json["status"] == "canceled"
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
