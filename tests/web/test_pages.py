"""The HTML pages work without JavaScript: form, field errors, job page, cancel button."""

from __future__ import annotations

from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Job
from tests.conftest import style_form
from tests.web.helpers import csrf_token


def test_form_page_renders(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'name="content"' in html and 'name="style"' in html and "multipart/form-data" in html


def test_bad_upload_shows_the_error_next_to_the_field(client, settings):
    response = client.post(
        "/jobs",
        data=style_form(b"nope", csrf_token=csrf_token(client), size=128),
        content_type="multipart/form-data",
    )
    assert response.status_code == 415
    html = response.get_data(as_text=True)
    assert 'class="field-error"' in html and "content:" in html
    assert 'value="128"' in html  # what the person typed is kept
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_submit_redirects_to_job_page_and_cancel_works(client):
    token = csrf_token(client)
    response = client.post(
        "/jobs",
        data=style_form(csrf_token=token),
        content_type="multipart/form-data",
    )
    assert response.status_code == 303
    location = response.headers["Location"]
    page = client.get(location).get_data(as_text=True)
    assert "queued" in page and 'http-equiv="refresh"' in page and "cancel-form" in page
    job_id = location.rsplit("/", 1)[1]
    assert client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token}).status_code == 303
    page = client.get(location).get_data(as_text=True)
    assert "canceled" in page and "cancel-form" not in page
    assert client.get("/jobs/" + "0" * 32).status_code == 404
