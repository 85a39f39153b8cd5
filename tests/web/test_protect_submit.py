"""Face protection and the protect mask through the real app: the form, the OpenAPI
description, the 400 that names the field, and jobs run by the real runner (in process)
whose ``metrics.json`` records the faces found."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from PIL import Image

from tests.conftest import style_form
from worker.runner import run_job

PORTRAIT = Path(__file__).resolve().parents[1] / "data" / "astronaut_96.jpg"


def _post(client, data: dict):
    return client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")


def _protect_png(size: tuple[int, int] = (48, 48)) -> bytes:
    """Black with a white square in the middle: protect the centre only."""
    mask = Image.new("L", size, 0)
    mask.paste(255, (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def _metrics(client, job_id: str) -> dict:
    with client.get(f"/api/v1/jobs/{job_id}/files/metrics.json") as response:
        return json.loads(response.data)


def test_a_portrait_job_protects_its_face_by_default_and_records_the_box(client, settings):
    response = _post(client, style_form(PORTRAIT.read_bytes(), iterations="2"))
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["params"]["protect_faces"] is True
    assert run_job(job["id"], worker="test", settings=settings) == "succeeded"
    metrics = _metrics(client, job["id"])
    faces = metrics["faces"]
    assert faces["detector"] == "opencv-haar-frontalface-alt2"
    [(x, y, w, h)] = faces["boxes"]  # one face, in the 48 px output's pixels
    assert 10 <= x + w / 2 <= 30 and 3 <= y + h / 2 <= 18 and 5 <= w <= 20, faces
    assert metrics["protect"]["face_factor"] > 1 and metrics["losses"]["protect"] >= 0


def test_a_protect_mask_is_stored_and_used_without_face_search(client, settings):
    form = {
        **style_form(protect_faces="false", iterations="2"),
        "protect": (io.BytesIO(_protect_png()), "p.png"),
    }
    response = _post(client, form)
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert {f["role"] for f in job["inputs"]} == {"content", "style", "protect"}
    assert run_job(job["id"], worker="test", settings=settings) == "succeeded"
    metrics = _metrics(client, job["id"])
    assert "faces" not in metrics  # not looked for
    assert 0.15 < metrics["protect"]["mask_share"] < 0.35  # the white quarter, blurred


def test_color_only_refuses_a_protect_mask_naming_the_field(client):
    form = {
        **style_form(color_only="true"),
        "protect": (io.BytesIO(_protect_png()), "p.png"),
    }
    response = _post(client, form)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == "protect" and "color_only" in error["message"], error
    assert client.get("/api/v1/jobs").get_json()["results"] == []


def test_the_openapi_description_and_the_form_carry_both_fields(client):
    schemas = client.get("/api/v1/openapi.json").get_json()["components"]["schemas"]
    style = schemas["StyleTransferSubmit"]
    assert style["properties"]["protect"]["format"] == "binary"
    assert "protect" not in style["required"]
    assert style["properties"]["protect_faces"]["type"] == "boolean"
    assert style["properties"]["protect_faces"]["default"] is True
    html = client.get("/?kind=style_transfer").get_data(as_text=True)
    form = re.search(r'<form[^>]*id="form-style_transfer".*?</form>', html, re.S).group(0)
    assert re.search(r'<input type="file" name="protect"', form)
    assert 'name="protect_faces"' in form
