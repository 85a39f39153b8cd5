"""Image fields through the real app: an aspect-ratio bound stated in the OpenAPI
description and enforced at submit from headers alone; pixel data is the worker's.

A truncated image is accepted at submit (only its header is read) and refused by the
worker's full decode: a style job fails ``invalid_input`` naming the field, a predict job
labels the readable images and lists the unreadable one in predictions.json.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Job
from tests.conftest import style_form, tiny_png
from tests.finetune_data import CLASSES, shape_files
from tests.image_shapes import EXTREME_SHAPES, png, truncated_png
from tests.web.helpers import make_job
from web import create_app
from worker.runner import run_job

MODEL_FILE = "model.pt"


def _post(client, data: dict):
    return client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")


def _jobs(settings, kind: str) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.kind == kind))


def _fine_tune_job(settings, model: bytes = b"not loaded at submit") -> str:
    return make_job(settings, kind="fine_tune", files={MODEL_FILE: ("result", model)})


def _forms(settings, shape: tuple[int, int]) -> dict[str, dict]:
    """One submit per image field, the extreme image in that field and good ones elsewhere."""
    extreme = png(*shape)
    model = _fine_tune_job(settings)
    return {
        "content": style_form(extreme),
        "style": {**style_form(), "style": (io.BytesIO(extreme), "s.png")},
        "image": {
            "kind": "predict",
            "model": model,
            "image": [(io.BytesIO(tiny_png()), "a.png"), (io.BytesIO(extreme), "b.png")],
        },
    }


@pytest.mark.parametrize("shape", EXTREME_SHAPES)
@pytest.mark.parametrize("field", ["content", "style", "image"])
def test_every_image_field_refuses_an_extreme_aspect_ratio(client, settings, field, shape):
    form = _forms(settings, shape)[field]
    queued = redis.Redis.from_url(settings.redis_url).llen("gpu")
    response = _post(client, form)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == field
    assert f"{shape[0]}x{shape[1]}" in error["message"]
    assert f"1:{settings.max_aspect_ratio}" in error["message"]
    assert _jobs(settings, form["kind"]) == 0
    assert redis.Redis.from_url(settings.redis_url).llen("gpu") == queued
    storage = Path(settings.storage_url.removeprefix("file://"))
    assert len(list(storage.rglob("*.*"))) == 1  # only the fine-tune job's model.pt


def test_the_bound_is_the_setting_and_the_openapi_description_states_it(settings):
    strict = dataclasses.replace(settings, max_aspect_ratio=3)
    client = create_app({"ATELIER_SETTINGS": strict, "TESTING": True}).test_client()
    schemas = client.get("/api/v1/openapi.json").get_json()["components"]["schemas"]
    described = [
        schemas["StyleTransferSubmit"]["properties"]["content"]["description"],
        schemas["StyleTransferSubmit"]["properties"]["style"]["items"]["description"],
        schemas["PredictSubmit"]["properties"]["image"]["items"]["description"],
        schemas["FineTuneSubmit"]["properties"]["dataset"]["description"],
    ]
    assert all("1:3" in text for text in described), described
    assert _post(client, style_form(tiny_png(60, 20))).status_code == 202
    refused = _post(client, style_form(tiny_png(61, 20)))
    assert refused.status_code == 400 and "1:3" in refused.get_json()["error"]["message"]


def test_a_predict_submit_reads_headers_only(client, settings):
    """64 truncated images are accepted: a full decode at submit would refuse every one."""
    model = _fine_tune_job(settings)
    images = [(io.BytesIO(truncated_png(64 + i, 64)), f"{i}.png") for i in range(64)]
    response = _post(client, {"kind": "predict", "model": model, "image": images})
    assert response.status_code == 202, response.get_json()
    assert len(response.get_json()["inputs"]) == 64


def test_a_truncated_style_input_is_accepted_then_refused_by_the_worker(client, settings):
    response = _post(client, style_form(truncated_png()))
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    assert run_job(job_id, worker="test", settings=settings) == "failed"
    job = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["error"]["code"] == "invalid_input"
    assert job["error"]["message"].startswith("content: the image is truncated or corrupt")


@pytest.fixture(scope="module")
def model_checkpoint() -> bytes:
    """A real fine-tuned model (a linear probe on drawn shapes, seconds on a CPU)."""
    import torch

    from worker.engines.datasets import ImageDataset, LabeledImage
    from worker.engines.finetune import FinetuneConfig, fine_tune

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        files = shape_files(8, seed=1)
        items = [LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in files.items()]
        config = FinetuneConfig.resolve(image_size=32, seed=0)
        return fine_tune(ImageDataset(list(CLASSES), items), config).checkpoint
    finally:
        torch.set_num_threads(threads)


def _predictions(client, job_id: str) -> dict:
    with client.get(f"/api/v1/jobs/{job_id}/files/predictions.json") as response:
        assert response.status_code == 200
        return json.loads(response.data)


def test_the_predict_worker_lists_an_unreadable_image_and_labels_the_rest(
    client, settings, model_checkpoint
):
    model = _fine_tune_job(settings, model_checkpoint)
    good = shape_files(1, seed=5)["discs/000.png"]
    images = [(io.BytesIO(good), "good.png"), (io.BytesIO(truncated_png()), "cut.png")]
    response = _post(client, {"kind": "predict", "model": model, "image": images})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    assert run_job(job_id, worker="test", settings=settings) == "succeeded"
    body = _predictions(client, job_id)
    first, second = body["predictions"]
    assert first["name"] == "good.png" and len(first["top"]) == 2 and "error" not in first
    assert second["name"] == "cut.png" and second["top"] == []
    assert "cannot be read" in second["error"] and body["unreadable"] == 1


def test_a_predict_job_with_no_readable_image_fails_invalid_input(
    client, settings, model_checkpoint
):
    model = _fine_tune_job(settings, model_checkpoint)
    images = [(io.BytesIO(truncated_png(40 + i, 40)), f"cut{i}.png") for i in range(2)]
    response = _post(client, {"kind": "predict", "model": model, "image": images})
    job_id = response.get_json()["id"]
    assert run_job(job_id, worker="test", settings=settings) == "failed"
    error = client.get(f"/api/v1/jobs/{job_id}").get_json()["error"]
    assert error["code"] == "invalid_input"
    assert "none of the 2 images could be read" in error["message"]
