"""Submitting a sweep: the parent and its children in one go, their bounds and quotas,
the ``parent`` filter, the cancel cascade and the hand-over of a waiting parent."""

from __future__ import annotations

import dataclasses
import io

import pytest
from sqlalchemy import select

from shared import states
from shared.db import session_scope
from shared.kinds import KINDS
from shared.kinds import style_transfer as style
from shared.kinds import sweep as sweeps
from shared.models import Job
from tests.conftest import tiny_png
from web import create_app

RED, GREEN, BLUE = (200, 40, 40), (40, 200, 40), (40, 40, 200)


def sweep_form(contents=(RED, GREEN), styles=(BLUE,), **fields) -> dict:
    """A sweep of ``contents`` x ``styles`` (tiny images of those colours)."""
    return {
        "kind": "sweep",
        "content": [(io.BytesIO(tiny_png(color=c)), f"c{i}.png") for i, c in enumerate(contents)],
        "style": [(io.BytesIO(tiny_png(color=c)), f"s{i}.png") for i, c in enumerate(styles)],
        "size": "48",
        **{name: str(value) for name, value in fields.items()},
    }


def submit(client, **fields):
    return client.post("/api/v1/jobs", data=sweep_form(**fields))


def children_of(client, parent_id: str) -> list[dict]:
    listing = client.get(f"/api/v1/jobs?parent={parent_id}&limit=100").get_json()
    return listing["results"]


def download(client, url: str) -> bytes:
    with client.get(url) as response:
        assert response.status_code == 200
        return response.data


def row(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def test_the_spec_takes_the_style_params_without_a_copy():
    """No drift: every style param a child takes is the style kind's own object, the
    swept lists are bounded by its strength and preset, and nothing else is added."""
    spec = KINDS["sweep"]
    passed = [p for p in style.PARAMS if p.name not in sweeps.NOT_PASSED]
    assert [spec.param(p.name) for p in passed] == passed
    assert all(spec.param(p.name) is p for p in passed)
    assert {p.name for p in spec.params} == {p.name for p in passed} | {"strengths", "presets"}
    strength, preset = style.SPEC.param("strength"), style.SPEC.param("preset")
    assert spec.param("strengths").bounds() == strength.bounds()
    assert spec.param("presets").choices == preset.choices
    assert sweeps.NOT_PASSED <= {p.name for p in style.PARAMS}, "a name left out must exist"
    assert spec.queue == "cpu" and spec.file_names == ("content", "style")


def test_one_child_per_combination_with_the_right_params_and_inputs(client, settings):
    response = submit(client, strengths="0.3,0.7", presets="fast", seed=5, iterations=4)
    assert response.status_code == 202, response.get_json()
    parent = response.get_json()
    assert parent["kind"] == "sweep" and parent["status"] == "queued"
    assert parent["parent_id"] is None and len(parent["children"]) == 4
    assert parent["progress"]["current"] == 0 and parent["progress"]["total"] == 4
    assert parent["queue_position"] is None, "it waits in no worker's queue"

    listed = {job["id"]: job for job in children_of(client, parent["id"])}
    assert set(listed) == set(parent["children"])
    expected = [(content, s) for content in (RED, GREEN) for s in (0.3, 0.7)]
    for child_id, (colour, strength) in zip(parent["children"], expected, strict=True):
        child = client.get(f"/api/v1/jobs/{child_id}").get_json()
        assert child["kind"] == "style_transfer" and child["parent_id"] == parent["id"]
        assert "children" not in child
        params = child["params"]
        assert params["strength"] == strength and params["preset"] == "fast"
        assert params["seed"] == 5 and params["size"] == 48 and params["iterations"] == 4
        assert "strengths" not in params and "children" not in params
        names = sorted(item["name"] for item in child["inputs"])
        assert names == ["content.png", "style-1.png"]
        files = f"/api/v1/jobs/{child_id}/files"
        assert download(client, f"{files}/content.png") == tiny_png(color=colour)
        assert download(client, f"{files}/style-1.png") == tiny_png(color=BLUE)
    # the children are published like any job; the parent waits, unpublished, unclaimable
    stored = row(settings, parent["id"])
    assert stored.queue == states.WAITING_QUEUE and stored.enqueued_at is None
    assert all(row(settings, c).enqueued_at is not None for c in parent["children"])
    with session_scope(settings.database_url) as session:
        assert states.claim(session, parent["id"], "w1") is None


def test_presets_alone_sweep_the_default_strength(client):
    response = submit(client, contents=(RED,), presets="fast,quality")
    assert response.status_code == 202, response.get_json()
    children = [
        client.get(f"/api/v1/jobs/{c}").get_json()["params"]
        for c in response.get_json()["children"]
    ]
    assert [(p["preset"], p["strength"]) for p in children] == [("fast", 0.5), ("quality", 0.5)]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "strengths"),  # nothing to sweep
        ({"strengths": "0.3,0.3"}, "strengths"),
        ({"strengths": "0.3,1.5"}, "strengths"),
        ({"presets": "fast,slow"}, "presets"),
        ({"strengths": "0.5", "style_weights": "1"}, "style_weights"),  # not a sweep field
        ({"strengths": "0.5", "size": "5000"}, "size"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_field(client, fields, field):
    response = submit(client, **fields)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["field"] == field
    assert client.get("/api/v1/jobs").get_json()["results"] == []


def test_too_many_children_are_refused_naming_the_swept_list(settings):
    client = create_app(
        {"ATELIER_SETTINGS": dataclasses.replace(settings, max_sweep_children=4)}
    ).test_client()
    for fields, field in (
        ({"strengths": "0.2,0.4,0.6"}, "strengths"),  # 2 x 1 x 3 = 6
        ({"presets": "fast,balanced,quality"}, "presets"),
    ):
        response = submit(client, **fields)
        assert response.status_code == 400, response.get_json()
        error = response.get_json()["error"]
        assert error["field"] == field and "at most 4" in error["message"]
    assert submit(client, strengths="0.2,0.4").status_code == 202  # 4 children fit
    assert len(client.get("/api/v1/jobs").get_json()["results"]) == 5


def test_every_child_counts_against_the_quota(settings):
    client = create_app(
        {"ATELIER_SETTINGS": dataclasses.replace(settings, max_active_per_owner=4)}
    ).test_client()
    response = submit(client, strengths="0.3,0.7")  # 4 children + the sweep = 5 > 4
    assert response.status_code == 429, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "quota_exceeded" and error["field"] == "strengths"
    assert client.get("/api/v1/jobs").get_json()["results"] == [], "nothing stored"
    assert submit(client, contents=(RED,), strengths="0.3,0.7").status_code == 202  # 3 fit


@pytest.mark.parametrize("value", ["abc", "0" * 31, "G" * 32, "0" * 32 + "\x00"])
def test_a_bad_parent_filter_is_refused_naming_it(client, value):
    response = client.get("/api/v1/jobs", query_string={"parent": value})
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "parent"


def test_cancel_on_the_parent_cancels_every_child(client, settings):
    parent = submit(client, strengths="0.3,0.7").get_json()
    other = submit(client, contents=(RED,), strengths="0.5").get_json()
    response = client.post(f"/api/v1/jobs/{parent['id']}/cancel")
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    statuses = {c["id"]: c["status"] for c in children_of(client, parent["id"])}
    assert set(statuses) == set(parent["children"])
    assert set(statuses.values()) == {"canceled"}
    assert client.get(f"/api/v1/jobs/{other['children'][0]}").get_json()["status"] == "queued"


def test_a_running_child_is_flagged_for_its_worker(client, settings):
    parent = submit(client, contents=(RED,), strengths="0.3,0.7").get_json()
    running, queued = parent["children"]
    with session_scope(settings.database_url) as session:
        assert states.claim(session, running, "w1") is not None
    client.post(f"/api/v1/jobs/{parent['id']}/cancel")
    assert row(settings, running).status == states.STARTING
    assert row(settings, running).cancel_requested_at is not None  # the worker stops it
    assert row(settings, queued).status == states.CANCELED


def test_canceling_children_leaves_the_others_and_the_last_hands_the_parent_over(client, settings):
    parent = submit(client, strengths="0.3,0.7").get_json()
    first, *rest = parent["children"]
    client.post(f"/api/v1/jobs/{first}/cancel")
    assert [c["status"] for c in children_of(client, parent["id"])].count("queued") == 3
    waiting = client.get(f"/api/v1/jobs/{parent['id']}").get_json()
    assert waiting["status"] == "queued" and waiting["progress"]["current"] == 1
    assert row(settings, parent["id"]).queue == states.WAITING_QUEUE
    for child in rest:
        client.post(f"/api/v1/jobs/{child}/cancel")
    handed = row(settings, parent["id"])
    assert handed.status == states.QUEUED and handed.queue == sweeps.SPEC.queue
    assert handed.progress_current == 4 and handed.enqueued_at is not None  # published
    with session_scope(settings.database_url) as session:
        assert not sweeps.hand_over(session, parent["id"]), "only once"
        assert sweeps.ready_parents(session) == []


def test_the_dispatcher_hands_over_a_parent_whose_last_child_ender_died(client, settings):
    from worker.dispatcher import hand_over_sweeps

    parent = submit(client, contents=(RED,), strengths="0.3,0.7").get_json()
    with session_scope(settings.database_url) as session:
        for child in parent["children"]:  # ended, and the process died before its hand-over
            assert states.cancel_queued(session, child)
    assert row(settings, parent["id"]).queue == states.WAITING_QUEUE
    assert hand_over_sweeps(settings) == [parent["id"]]
    assert hand_over_sweeps(settings) == []
    handed = row(settings, parent["id"])
    assert handed.queue == "cpu" and handed.enqueued_at is None  # dispatch() publishes it
    assert handed.progress_current == 2


def test_the_gallery_shows_a_sweep_as_one_entry(client):
    parent = submit(client, strengths="0.3,0.7").get_json()
    page = client.get("/jobs").get_data(as_text=True)
    assert parent["id"] in page
    assert not any(child in page for child in parent["children"])
    children_page = client.get(f"/jobs?parent={parent['id']}").get_data(as_text=True)
    assert all(child in children_page for child in parent["children"])
    with session_scope(client.application.config["ATELIER"].database_url) as session:
        ids = set(session.scalars(select(Job.id).where(Job.parent_id == parent["id"])))
    assert ids == set(parent["children"])
