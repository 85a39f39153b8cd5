"""predict's ``runtime``: onnx needs the model job's model.onnx, refused at submit if absent."""

from __future__ import annotations

import io

from sqlalchemy import func, select

from shared.db import session_scope
from shared.jobs import StoredFile, add_job, new_job_id
from shared.models import Job
from tests.conftest import tiny_png


def _model_job(settings, names: list[str]) -> str:
    job_id = new_job_id()
    files = [StoredFile("result", name, "application/octet-stream", 1) for name in names]
    with session_scope(settings.database_url) as session:
        job = add_job(
            session, job_id=job_id, kind="fine_tune", owner="local", params={}, files=files
        )
        job.status = "succeeded"
    return job_id


def _predict(client, model: str, **fields):
    return client.post(
        "/api/v1/jobs",
        data={
            "kind": "predict",
            "model": model,
            **fields,
            "image": (io.BytesIO(tiny_png()), "a.png"),
        },
        content_type="multipart/form-data",
    )


def test_onnx_runtime_without_model_onnx_is_refused_naming_runtime(client, settings):
    model = _model_job(settings, ["model.pt", "metrics.json"])
    response = _predict(client, model, runtime="onnx")
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == "runtime" and "model.onnx" in error["message"]
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1  # the model only


def test_runtimes_are_accepted_when_their_file_exists(client, settings):
    old = _model_job(settings, ["model.pt"])
    exported = _model_job(settings, ["model.pt", "model.onnx"])
    for model, fields in [(old, {}), (exported, {"runtime": "onnx"})]:
        response = _predict(client, model, **fields)
        assert response.status_code == 202, response.get_json()
        assert response.get_json()["params"]["runtime"] == fields.get("runtime", "torch")
    bad = _predict(client, exported, runtime="tensorrt")
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "runtime"
