"""Adding a job kind takes one module: ``invert`` (tests/e2e/invert_kind.py) runs end to end.

The module is named only in ATELIER_KIND_MODULES of the processes that serve it: a real
gunicorn web server (``atelier web``'s command), a real Celery worker and the
``atelier submit`` client. Nothing else in the project mentions the kind, yet it gets a
form tab, an OpenAPI schema with its bounds, parsing that refuses what the schema
refuses, a CLI subcommand, and its jobs run through the same lifecycle as the built-in
kinds. This test process never imports the module, so the kind stays out of the other
tests' registry.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from shared import migrate
from tests.conftest import ROOT, WorkerProcess, make_settings, settings_env, tiny_png, wait_for
from worker.embedded import web_command

MODULE = "tests.e2e.invert_kind"
pytestmark = pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path, fresh_db_url, redis_url) -> Iterator[tuple[str, dict[str, str]]]:
    """A gunicorn web server and a worker that both load the invert module."""
    settings = dataclasses.replace(
        make_settings(tmp_path, fresh_db_url, redis_url), kind_modules=MODULE
    )
    migrate.upgrade(settings.database_url)
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    port = _free_port()
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 - closed below
    web = subprocess.Popen(
        web_command("127.0.0.1", port, workers=1),
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = WorkerProcess(settings, f"invert-{uuid.uuid4().hex[:8]}", tmp_path / "worker.log")
    base = f"http://127.0.0.1:{port}"
    try:
        worker.wait_ready(settings)
        wait_for(lambda: _up(base), timeout=60)
        yield base, env
    finally:
        worker.stop()
        web.terminate()
        web.wait(20)
        log.close()


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=2).status_code in (200, 503)
    except requests.ConnectionError:
        time.sleep(0.2)
        return False


def test_a_kind_from_one_module_is_described_parsed_run_and_served(served, tmp_path):
    base, env = served
    doc = requests.get(f"{base}/api/v1/openapi.json", timeout=10).json()
    schema = doc["components"]["schemas"]["InvertSubmit"]
    assert schema["properties"]["output_format"]["enum"] == ["png", "webp"]
    assert schema["properties"]["keep_red"]["type"] == "boolean"
    assert "image" in schema["required"]
    page = requests.get(f"{base}/?kind=invert", timeout=10).text
    assert 'id="form-invert"' in page and 'name="keep_red"' in page

    refused = requests.post(
        f"{base}/api/v1/jobs",
        data={"kind": "invert", "output_format": "gif"},
        files={"image": ("a.png", io.BytesIO(tiny_png()))},
        timeout=30,
    )
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "output_format"

    source = tiny_png(40, 24)
    accepted = requests.post(
        f"{base}/api/v1/jobs",
        data={"kind": "invert", "keep_red": "true"},
        files={"image": ("a.png", io.BytesIO(source))},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]

    def ended() -> dict | None:
        job = requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json()
        return job if job["status"] in ("succeeded", "failed", "canceled") else None

    job = wait_for(ended, timeout=60)
    assert job["status"] == "succeeded", job
    assert job["params"] == {"keep_red": True, "output_format": "png"}
    [output] = job["outputs"]
    result = requests.get(base + output["url"], timeout=10)
    original = Image.open(io.BytesIO(source)).convert("RGB")
    inverted = Image.open(io.BytesIO(result.content)).convert("RGB")
    for x, y in ((0, 0), (20, 12), (39, 23)):
        r, g, b = original.getpixel((x, y))
        assert inverted.getpixel((x, y)) == (r, 255 - g, 255 - b)

    out = tmp_path / "cli-out"
    image = tmp_path / "b.png"
    image.write_bytes(source)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "submit",
            "invert",
            str(image),
            "--output-format",
            "webp",
            "--wait",
            "-o",
            str(out),
            "--url",
            base,
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert [p.name for p in Path(out).iterdir() if p.name.startswith("result")] == ["result.webp"]
