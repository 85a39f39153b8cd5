"""End to end over HTTP: submit, a real worker runs the real engine, poll, download."""

from __future__ import annotations

import io
import time

import requests
from PIL import Image, ImageChops

from tests.conftest import tiny_png, wait_for

TERMINAL = {"succeeded", "failed", "canceled"}


def submit(base: str, content: bytes, style: bytes, **fields) -> dict:
    response = requests.post(
        f"{base}/api/v1/jobs",
        data={"kind": "style_transfer", **{k: str(v) for k, v in fields.items()}},
        files={
            "content": ("content.png", content, "image/png"),
            "style": ("style.png", style, "image/png"),
        },
        timeout=30,
    )
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/api/v1/jobs/{response.json()['id']}"
    return response.json()


def poll(base: str, job_id: str, until=TERMINAL, timeout: float = 120) -> dict:
    def check():
        job = requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json()
        return job if job["status"] in until else None

    return wait_for(check, timeout=timeout, interval=0.2)


def test_submit_poll_download(live_server, e2e_worker):
    content = tiny_png(64, 40, color=(30, 160, 60))
    style = tiny_png(48, 48, color=(220, 200, 20))
    job = submit(live_server, content, style, size=64, iterations=8, preset="fast", seed=7)
    assert job["status"] == "queued" and job["params"]["seed"] == 7
    done = poll(live_server, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["percent"] == 100.0
    assert done["metrics"]["attempts"] == 1 and done["attempts"] == 1
    names = {o["name"] for o in done["outputs"]}
    assert {"result.png", "metrics.json"} <= names
    assert done["preview"] is not None
    history = done["progress"]["history"]
    assert history and all(p["loss"] is not None for p in history)
    assert [p["step"] for p in history] == sorted(p["step"] for p in history)

    response = requests.get(live_server + done["urls"]["self"] + "/files/result.png", timeout=10)
    assert response.headers["Content-Type"] == "image/png"
    result = Image.open(io.BytesIO(response.content))
    assert result.format == "PNG" and result.size == (64, 40)
    original = Image.open(io.BytesIO(content)).convert("RGB")
    diff = ImageChops.difference(result.convert("RGB"), original)
    assert max(high for _low, high in diff.getextrema()) > 20  # visibly changed

    listing = requests.get(f"{live_server}/api/v1/jobs?limit=50", timeout=10).json()
    assert job["id"] in {j["id"] for j in listing["results"]}
    page = requests.get(f"{live_server}/jobs/{job['id']}", timeout=10)
    assert page.status_code == 200 and "succeeded" in page.text


def test_cancel_running_job_stops_it(live_server, e2e_worker):
    job = submit(
        live_server,
        tiny_png(96, 96),
        tiny_png(64, 64, color=(10, 10, 200)),
        size=96,
        iterations=3000,
        multiscale="false",
        seed=1,
    )
    poll(live_server, job["id"], until={"processing"} | TERMINAL, timeout=60)
    requested = time.monotonic()
    response = requests.post(f"{live_server}/api/v1/jobs/{job['id']}/cancel", timeout=10)
    assert response.status_code == 200 and response.json()["cancel_requested_at"]
    done = poll(live_server, job["id"], timeout=30)
    assert done["status"] == "canceled"
    assert time.monotonic() - requested < 10
    assert not [o for o in done["outputs"] if o["name"].startswith("result")]


def test_cancel_queued_job_is_immediate_and_never_runs(live_server, e2e_worker, e2e_settings):
    # Occupy the single worker so the next job stays queued.
    blocker = submit(
        live_server, tiny_png(96, 96), tiny_png(), size=96, iterations=3000, multiscale="false"
    )
    poll(live_server, blocker["id"], until={"processing"} | TERMINAL, timeout=60)
    queued = submit(live_server, tiny_png(), tiny_png(), size=48, iterations=5)
    assert (
        requests.get(f"{live_server}/api/v1/jobs/{queued['id']}", timeout=10).json()[
            "queue_position"
        ]
        >= 1
    )
    canceled = requests.post(f"{live_server}/api/v1/jobs/{queued['id']}/cancel", timeout=10).json()
    assert canceled["status"] == "canceled" and canceled["finished_at"]
    requests.post(f"{live_server}/api/v1/jobs/{blocker['id']}/cancel", timeout=10)
    poll(live_server, blocker["id"], timeout=30)
    time.sleep(1.5)  # the worker now receives the canceled job's message (or its revoke)
    after = requests.get(f"{live_server}/api/v1/jobs/{queued['id']}", timeout=10).json()
    assert after["status"] == "canceled" and after["started_at"] is None
    assert after["attempts"] == 0 and after["outputs"] == []
    again = requests.post(f"{live_server}/api/v1/jobs/{queued['id']}/cancel", timeout=10)
    assert again.status_code == 200 and again.json()["status"] == "canceled"


def test_delete_terminal_job_removes_files(live_server, e2e_worker):
    job = submit(live_server, tiny_png(), tiny_png(), size=48, iterations=2)
    done = poll(live_server, job["id"])
    assert done["status"] == "succeeded"
    assert requests.delete(f"{live_server}/api/v1/jobs/{job['id']}", timeout=10).status_code == 204
    assert requests.get(f"{live_server}/api/v1/jobs/{job['id']}", timeout=10).status_code == 404


def test_healthz_counts_the_worker(live_server, e2e_worker):
    body = requests.get(f"{live_server}/healthz", timeout=10).json()
    assert body["db"] == "ok" and body["redis"] == "ok" and body["workers"] >= 1
