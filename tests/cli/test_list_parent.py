"""``atelier list --parent ID``: a sweep's children, over HTTP against a live server."""

from __future__ import annotations

import json
import shlex

import pytest
import requests

from shared import fairness
from shared.db import session_scope
from tests.conftest import tiny_png


@pytest.fixture
def held_sweep(live_server, e2e_settings):
    """A sweep of two children that stay queued (their queue paused), canceled after."""
    with session_scope(e2e_settings.database_url) as session:
        fairness.pause(session, "gpu", by="test")
    try:
        response = requests.post(
            f"{live_server}/api/v1/jobs",
            data={"kind": "sweep", "strengths": "0.3,0.7", "size": "48"},
            files=[
                ("content", ("c.png", tiny_png(), "image/png")),
                ("style", ("s.png", tiny_png(color=(10, 10, 200)), "image/png")),
            ],
            timeout=30,
        )
        assert response.status_code == 202, response.text
        parent = response.json()
        yield parent
        requests.post(f"{live_server}/api/v1/jobs/{parent['id']}/cancel", timeout=30)
    finally:
        with session_scope(e2e_settings.database_url) as session:
            fairness.resume(session, "gpu")


def test_list_parent_shows_only_that_sweeps_children(atelier, live_server, held_sweep):
    parent, children = held_sweep["id"], held_sweep["children"]
    rc, out, err = atelier("list", "--parent", parent, "--json", url=live_server)
    assert rc == 0, err
    assert sorted(job["id"] for job in json.loads(out)["results"]) == sorted(children)

    rc, out, _ = atelier("list", "--parent", parent)
    assert rc == 0 and out.splitlines()[0].startswith("ID")
    assert all(child in out for child in children) and parent not in out

    rc, out, err = atelier("list", "--parent", parent, "--limit", "1")
    first = [child for child in children if child in out]
    assert rc == 0 and len(first) == 1
    argv = shlex.split(err.strip().removeprefix("more: "))
    assert argv[:6] == ["atelier", "list", "--parent", parent, "--limit", "1"]  # filters kept
    rc, out, err = atelier(*argv[1:])  # the next page, as printed
    assert rc == 0 and [child for child in children if child in out] == [
        child for child in children if child not in first
    ]
    assert "more:" not in err, "two children, two pages"

    rc, out, _ = atelier("list", "--parent", "0" * 32, "--json")  # a well-formed id: no jobs
    assert rc == 0 and json.loads(out)["results"] == []


def test_a_bad_parent_is_the_servers_400_named_cleanly(atelier, live_server):
    rc, out, err = atelier("list", "--parent", "not-a-job", url=live_server)
    assert rc == 2 and out == ""
    assert err.startswith("atelier: 400 ") and "(field parent)" in err and "job id" in err
    assert "Traceback" not in err
    rc, out, _ = atelier("list", "--parent", "not-a-job", "--json")
    error = json.loads(out)["error"]
    assert error["field"] == "parent" and "not-a-job" not in error["message"]
