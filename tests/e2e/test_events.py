"""A real job's event stream over HTTP: live server, real worker, real engine."""

from __future__ import annotations

import json

import requests

from tests.conftest import style_form

FILES = ("content", "style")


def _events(response) -> list[tuple[str, dict, int | None]]:
    """Every event of the stream until the server closes it."""
    seen, kind, data, event_id = [], None, None, None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line.startswith("id: "):
            event_id = int(line[4:])
        elif line == "" and kind:
            seen.append((kind, data, event_id))
            kind, event_id = None, None
    return seen


def test_a_jobs_stream_carries_its_progress_and_ends_with_it(live_server, e2e_worker):
    form = style_form(size="64", iterations="40", multiscale="false", seed="3")
    files = {name: (value[1], value[0]) for name, value in form.items() if name in FILES}
    fields = {name: value for name, value in form.items() if name not in FILES}
    submitted = requests.post(f"{live_server}/api/v1/jobs", data=fields, files=files, timeout=30)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]

    with requests.get(
        f"{live_server}/api/v1/jobs/{job_id}/events", stream=True, timeout=120
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        seen = _events(response)

    kinds = [kind for kind, _, _ in seen]
    assert kinds[0] == "status" and kinds[-2:] == ["status", "end"]
    assert seen[-2][1]["status"] == "succeeded" and seen[-1][1] == {"status": "succeeded"}
    assert seen[-2][1]["outputs"][0]["name"].startswith("result")
    if seen[0][1]["status"] in ("queued", "starting"):  # the run happened while we listened
        assert "progress" in kinds
    ids = [event_id for _, _, event_id in seen if event_id]
    assert ids == sorted(set(ids))
    again = requests.get(
        f"{live_server}/api/v1/jobs/{job_id}/events",
        headers={"Last-Event-ID": str(ids[-1])},
        timeout=30,
    )
    assert again.status_code == 204
