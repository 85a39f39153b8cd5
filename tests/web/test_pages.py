"""The HTML pages work without JavaScript: form, field errors, job page, cancel button."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from shared.db import session_scope
from shared.kinds import KINDS
from shared.models import Job
from tests.conftest import style_form
from tests.web.helpers import csrf_token
from web.kinds.describe import number_text


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


def _form(html: str, kind: str) -> str:
    return re.search(rf'<form[^>]*id="form-{kind}".*?</form>', html, re.S).group(0)


def _named(html: str) -> list[str]:
    return re.findall(r'<(?:input|select)[^>]*\bname="(\w+)"', html)


def test_the_form_shows_exactly_the_specs_expert_params(client, settings):
    html = client.get("/").get_data(as_text=True)
    tabs = re.findall(r'class="kind-tab" data-kind="(\w+)"', html)
    assert tabs == list(KINDS)
    for name, spec in KINDS.items():
        form = _form(html, name)
        expert = re.search(r'<details class="expert".*?</details>', form, re.S)
        shown = _named(expert.group(0)) if expert else []
        assert shown == [p.name for p in spec.params if p.expert], name
        # every parameter and file of the kind is in its form (the preset as radio buttons)
        fields = set(_named(form)) - {"csrf_token", "kind"}
        assert fields == {p.name for p in spec.params} | set(spec.file_names), name
        for param in spec.params:
            if param.type in ("int", "float"):  # number inputs, or strength's slider
                tag = re.search(rf'<input type="(?:number|range)" name="{param.name}"[^>]*>', form)
                low, high = param.bounds(settings)
                assert f'min="{number_text(low)}"' in tag.group(0), (name, param.name)
                assert f'max="{number_text(high)}"' in tag.group(0), (name, param.name)
    size = re.search(r'<input type="number" name="size"[^>]*>', html, re.S).group(0)
    assert f'max="{settings.max_size}"' in size and 'value="512"' in size
    iterations = re.search(r'<input type="number" name="iterations"[^>]*>', html, re.S).group(0)
    assert f'max="{settings.max_iterations}"' in iterations
    assert 'placeholder="random, recorded"' in _form(html, "fine_tune")


def test_an_expert_field_error_opens_the_expert_section(client):
    response = client.post(
        "/jobs",
        data=style_form(csrf_token=csrf_token(client), style_scale="9"),
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    form = _form(response.get_data(as_text=True), "style_transfer")
    assert re.search(r"<details class=\"expert\" open>", form)
    assert 'data-error-for="style_scale" role="alert" >style_scale' in form
