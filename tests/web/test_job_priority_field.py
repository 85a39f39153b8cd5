"""The job object shows the priority the job was submitted with, on every path that
builds one: the single-job read (one statement on the driver's cursor), the list and a
cancel (the ORM), and the OpenAPI ``Job`` schema describes it with the submit's bounds."""

from __future__ import annotations

from jsonschema import Draft202012Validator

from shared import fairness
from tests.conftest import style_form


def _submit(client, **fields) -> str:
    answer = client.post(
        "/api/v1/jobs", data=style_form(**fields), content_type="multipart/form-data"
    )
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["id"]


def test_get_list_and_cancel_show_the_submitted_priority(client):
    low, default, high = (
        _submit(client, priority="2"),
        _submit(client),
        _submit(client, priority="9"),
    )
    expected = {low: 2, default: fairness.DEFAULT_PRIORITY, high: 9}
    for job_id, priority in expected.items():
        assert client.get(f"/api/v1/jobs/{job_id}").get_json()["priority"] == priority
    listed = client.get("/api/v1/jobs").get_json()["results"]
    assert {job["id"]: job["priority"] for job in listed} == expected
    canceled = client.post(f"/api/v1/jobs/{low}/cancel").get_json()
    assert canceled["status"] == "canceled" and canceled["priority"] == 2


def test_the_priority_orders_the_queue_position_it_sits_next_to(client):
    """The field is the job's own priority: a later job of a higher one is ahead."""
    first = _submit(client, priority="3")
    later = _submit(client, priority="7")
    first_body = client.get(f"/api/v1/jobs/{first}").get_json()
    later_body = client.get(f"/api/v1/jobs/{later}").get_json()
    assert (first_body["priority"], later_body["priority"]) == (3, 7)
    assert (first_body["queue_position"], later_body["queue_position"]) == (2, 1)


def test_the_job_schema_describes_priority_with_the_submit_bounds(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    field = spec["components"]["schemas"]["Job"]["properties"]["priority"]
    assert field["type"] == "integer"
    assert (field["minimum"], field["maximum"]) == (fairness.PRIORITY_MIN, fairness.PRIORITY_MAX)
    job = client.get(f"/api/v1/jobs/{_submit(client, priority='4')}").get_json()
    root = {"components": spec["components"], "$ref": "#/components/schemas/Job"}
    validator = Draft202012Validator(root)
    validator.validate(job)
    assert not validator.is_valid({**job, "priority": fairness.PRIORITY_MAX + 1})
