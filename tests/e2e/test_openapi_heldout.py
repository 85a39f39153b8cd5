"""A client's check of the OpenAPI description against the running service.

It reads ``/api/v1/openapi.json`` from a live server, submits every edge value each
field's schema allows (bounds, each choice, both booleans, list edges) and values just
beyond them over real HTTP, and lets a real Celery worker run every accepted job. A
mismatch is an allowed value refused at submit, an allowed value whose job then fails,
or a value beyond the description that is accepted. It must find none.

The server runs with small operator caps (ATELIER_MAX_SIZE, ATELIER_MAX_ITERATIONS), so
the description's bounds are cheap to run at; the values come from the description,
the same code as tests/test_kind_boundaries.py generates them with.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from shared import migrate
from shared.kinds import KINDS
from tests.conftest import WorkerProcess, make_settings, tiny_png
from tests.e2e.conftest import closing
from tests.finetune_data import make_zip, shape_files
from tests.test_kind_boundaries import COMMON, edges, outside, paired

pytestmark = pytest.mark.heldout
TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture(scope="module")
def service(tmp_path_factory, redis_server) -> Iterator[str]:
    """A live server and one real worker, sharing small caps, on their own database."""
    from tests.conftest import redis_database
    from web import create_app

    tmp = tmp_path_factory.mktemp("heldout")
    with redis_database(redis_server) as redis_url:
        settings = make_settings(
            tmp,
            f"sqlite:///{tmp}/atelier.db",
            redis_url,
            max_size=48,
            max_iterations=3,
            max_active_per_owner=1000,
        )
        migrate.upgrade(settings.database_url)
        worker = WorkerProcess(settings, f"heldout-{uuid.uuid4().hex[:8]}", tmp / "worker.log")
        server = make_server(
            "127.0.0.1", 0, closing(create_app({"ATELIER_SETTINGS": settings})), threaded=True
        )
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            worker.wait_ready(settings)
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(5)
            worker.stop()


def files_for(kind: str, fields: dict[str, str]) -> list[tuple[str, tuple[str, bytes]]]:
    """The uploads a submission of ``kind`` needs: one style image per style weight."""
    if kind == "style_transfer":
        styles = len(fields.get("style_weights", "1").split(","))
        return [("content", ("c.png", tiny_png()))] + [
            ("style", (f"s{i}.png", tiny_png(color=(40 * i, 90, 200)))) for i in range(styles)
        ]
    if kind == "fine_tune":
        return [("dataset", ("d.zip", make_zip(shape_files(per_class=5))))]
    return [("image", ("i.png", tiny_png()))]


def submit(base: str, kind: str, fields: dict[str, str]) -> requests.Response:
    uploads = [(name, (fname, io.BytesIO(data))) for name, (fname, data) in files_for(kind, fields)]
    return requests.post(
        f"{base}/api/v1/jobs", data={"kind": kind, **fields}, files=uploads, timeout=60
    )


def unavailable(error: dict) -> bool:
    """A backbone whose torchvision weights this machine lacks: the value is valid and
    the engine accepted it; the deployment cannot run it (README, "Fine-tuning")."""
    return "never downloads at run time" in (error.get("message") or "")


def wait_all(base: str, jobs: dict[str, Any], timeout: float = 2400) -> dict[str, dict]:
    ended: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(jobs) and time.monotonic() < deadline:
        for job_id in set(jobs) - set(ended):
            job = requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json()
            if job["status"] in TERMINAL:
                ended[job_id] = job
        time.sleep(0.5)
    assert len(ended) == len(jobs), f"{len(jobs) - len(ended)} jobs did not end in {timeout}s"
    return ended


def test_the_description_matches_the_service(service):
    doc = requests.get(f"{service}/api/v1/openapi.json", timeout=10).json()
    described: dict[str, dict[str, dict]] = {}
    for schema in doc["components"]["schemas"].values():
        props = schema.get("properties", {})
        kind = props.get("kind", {}).get("const")
        if kind in KINDS:
            files = KINDS[kind].file_names
            described[kind] = {n: p for n, p in props.items() if n not in COMMON and n not in files}

    model = submit(service, "fine_tune", {"seed": "1"}).json()["id"]
    assert wait_all(service, {model: None})[model]["status"] == "succeeded"

    mismatches, accepted, cases = [], {}, 0
    for kind, fields in described.items():
        base = {"model": model} if kind == "predict" else {}  # a real model, not a made-up id
        for name, schema in fields.items():
            allowed = [model] if name == "model" else edges(schema)
            for value in allowed:
                cases += 1
                response = submit(service, kind, {**paired(kind, name, value), **base})
                if response.status_code != 202:
                    mismatches.append(("allowed, refused", kind, name, value, response.text))
                else:
                    accepted[response.json()["id"]] = (kind, name, value)
            for value in outside(schema):
                cases += 1
                response = submit(service, kind, {**base, name: value})
                body = response.json()
                if response.status_code != 400 or body.get("error", {}).get("field") != name:
                    mismatches.append(("beyond, not refused", kind, name, value, body))
    ended = wait_all(service, accepted)
    for job_id, job in ended.items():
        error = job.get("error") or {}
        if job["status"] != "succeeded" and not unavailable(error):
            mismatches.append(("allowed, job failed", *accepted[job_id], error))
    assert cases > 150
    for mismatch in mismatches:
        print("MISMATCH", *mismatch)
    assert mismatches == []
