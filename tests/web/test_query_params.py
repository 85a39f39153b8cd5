"""Query parameters of the job lists: a bad value is a 400 naming it, never a 500.

Each case runs on SQLite and PostgreSQL (the ``settings`` fixture), against the JSON list
and the gallery page. PostgreSQL is the stricter one: text with a NUL byte is an error
there, where SQLite only finds no row.
"""

from __future__ import annotations

import base64
import html
import json
import re
from urllib.parse import urlencode

import pytest

from tests.web.helpers import make_job

KINDS = ("style_transfer", "fine_tune", "predict", "sweep")
MAX_LIMIT = 100  # the documented bounds, spelled out: the tests hold the contract


def _cursor(created: str, job_id: str = "0123456789abcdef0123456789abcdef") -> str:
    """A cursor the way shared.jobs.encode_cursor lays one out, with any contents."""
    raw = json.dumps([created, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = [
    _cursor("2024-01-01T00:00:00"),  # no time zone: a 500 on both databases before
    _cursor("0001-01-01T00:00:00+01:00"),  # before year 1 once in UTC
    _cursor("2024-01-01T00:00:00+00:00", "not-a-job-id"),
    _cursor("2024-01-01T00:00:00+00:00", "0123456789abcdef0123456789abcdef\x00"),
    "garbage",
    "not base64!",
    "\x00",
    "A" * 1000,
]
BAD_VALUES = {
    "kind": ["\x00", "bogus", "style_transfer\x1f", "STYLE_TRANSFER", " predict"],
    "status": ["\x00", "bogus", "done", "queued\x00"],
    "cursor": BAD_CURSORS,
}
BAD_LIMITS = ["-1", "0", str(MAX_LIMIT + 1), "9" * 40, "abc", "1_0", " 5", "\u0663", "\x00"]


def _url(path: str, name: str, value: str) -> str:
    return f"{path}?{urlencode({name: value})}"


def _alert(response) -> str:
    """The message of the error page."""
    found = re.search(r'<p class="error" role="alert">(.*?)</p>', response.get_data(as_text=True))
    assert found, response.get_data(as_text=True)[:500]
    return html.unescape(found.group(1))


@pytest.mark.parametrize("name", [*BAD_VALUES, "limit"])
def test_the_api_names_the_bad_parameter(client, name):
    for value in BAD_VALUES.get(name, BAD_LIMITS):
        response = client.get(_url("/api/v1/jobs", name, value))
        assert response.status_code == 400, (value, response.get_data(as_text=True)[:300])
        error = response.get_json()["error"]
        assert error == {"code": "invalid", "field": name, "message": error["message"]}, value
        assert name in error["message"], value


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_the_gallery_names_the_bad_parameter(client, name):
    """The page takes no limit (24 cards a page), so it ignores one like any unknown key."""
    for value in BAD_VALUES[name]:
        response = client.get(_url("/jobs", name, value))
        assert response.status_code == 400, (value, response.get_data(as_text=True)[:300])
        assert response.mimetype == "text/html", value
        assert name in _alert(response), value
    assert client.get(_url("/jobs", "limit", "abc")).status_code == 200


def test_real_cursors_and_empty_filters_still_work(client, settings):
    jobs = [make_job(settings) for _ in range(3)]
    first = client.get("/api/v1/jobs?limit=2").get_json()
    assert [j["id"] for j in first["results"]] == jobs[:0:-1]
    for path in ("/api/v1/jobs", "/jobs"):
        page = client.get(_url(path, "cursor", first["next"]))
        assert page.status_code == 200, path
    rest = client.get(_url("/api/v1/jobs", "cursor", first["next"])).get_json()
    assert [j["id"] for j in rest["results"]] == jobs[:1] and rest["next"] is None
    assert jobs[0] in client.get(_url("/jobs", "cursor", first["next"])).get_data(as_text=True)
    # any time zone will do; the forms send "" for "any"
    future = _cursor("2999-01-01T02:00:00+02:00", "f" * 32)
    assert len(client.get(_url("/api/v1/jobs", "cursor", future)).get_json()["results"]) == 3
    empty = "?kind=&status=&cursor=&limit="
    assert len(client.get(f"/api/v1/jobs{empty}").get_json()["results"]) == 3
    assert client.get(f"/jobs{empty}").status_code == 200
    for kind in KINDS:
        assert client.get(_url("/api/v1/jobs", "kind", kind)).status_code == 200
        assert client.get(_url("/jobs", "kind", kind)).status_code == 200


def test_the_description_states_the_bounds(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    params = {p["name"]: p for p in spec["paths"]["/api/v1/jobs"]["get"]["parameters"]}
    assert params["kind"]["schema"]["enum"] == list(KINDS)
    assert params["status"]["schema"]["enum"]
    assert params["limit"]["schema"]["minimum"] == 1
    assert params["limit"]["schema"]["maximum"] == MAX_LIMIT
    assert 100 < params["cursor"]["schema"]["maxLength"] < 1000
    assert all(p.get("description") for p in params.values())
