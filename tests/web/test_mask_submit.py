"""Region masks and colour tools through the real app: the form, the OpenAPI description,
the 400s that name the field, and jobs run by the real runner (in process)."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from tests.conftest import style_form, tiny_png
from worker.runner import run_job


def mask_png(size: tuple[int, int] = (48, 32)) -> bytes:
    """Left half red, right half blue."""
    mask = Image.new("RGB", size, (255, 0, 0))
    mask.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def _post(client, data: dict):
    return client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")


def with_mask(mask: bytes | None = None, **fields) -> dict:
    return {**style_form(**fields), "mask": (io.BytesIO(mask or mask_png()), "m.png")}


def test_a_mask_job_is_accepted_and_runs_with_a_kept_region(client, settings):
    response = _post(client, with_mask(mask_styles="red:keep,blue:0", iterations="2"))
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["params"]["mask_styles"] == ["red:keep", "blue:0"]
    assert {f["role"] for f in job["inputs"]} == {"content", "style", "mask"}
    assert run_job(job["id"], worker="test", settings=settings) == "succeeded"
    with client.get(f"/api/v1/jobs/{job['id']}/files/metrics.json") as metrics:
        regions = json.loads(metrics.data)["regions"]
    assert [r["target"] for r in regions] == ["keep", 0]


def test_a_color_only_job_writes_its_result_and_thumbnail(client, settings):
    response = _post(client, style_form(color_only="true"))
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    assert run_job(job_id, worker="test", settings=settings) == "succeeded"
    job = client.get(f"/api/v1/jobs/{job_id}").get_json()
    names = {f["name"] for f in job["outputs"]}
    assert {"result.png", "metrics.json"} <= names, names
    assert job["thumbnail"]["url"].endswith("/thumbnail.jpg")
    with client.get(job["thumbnail"]["url"]) as thumbnail:
        assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/jpeg"
    with client.get(f"/api/v1/jobs/{job_id}/files/metrics.json") as metrics:
        recorded = json.loads(metrics.data)
    assert recorded["scales"] == [] and recorded["weights"] is None


NO_MASK = object()  # a submit without a mask upload


@pytest.mark.parametrize(
    ("mask", "fields", "field", "words"),
    [
        (NO_MASK, {"mask_styles": "red:0"}, "mask_styles", "needs a mask"),
        (None, {}, "mask", "needs mask_styles"),
        (None, {"mask_styles": "red:1"}, "mask_styles", "1 style image"),
        (None, {"mask_styles": "red:0,red:keep"}, "mask_styles", "more than once"),
        (None, {"mask_styles": "purple:0"}, "mask_styles", "purple:0"),
        (None, {"mask_styles": "red:0,red:0"}, "mask_styles", "repeat"),
        (None, {"mask_styles": "red:0", "color_only": "true"}, "color_only", "mask"),
        (None, {"mask_styles": "red:0", "histogram_weight": "1"}, "histogram_weight", "mask"),
        (NO_MASK, {"color_only": "true", "preserve_color": "luminance"}, "color_only", "none"),
        (tiny_png(500, 10), {"mask_styles": "red:0"}, "mask", "500x10"),
    ],
)
def test_bad_masks_and_colour_combinations_are_refused_naming_the_field(
    client, mask, fields, field, words
):
    form = style_form(**fields) if mask is NO_MASK else with_mask(mask, **fields)
    response = _post(client, form)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert client.get("/api/v1/jobs").get_json()["results"] == []


def test_the_openapi_description_carries_the_mask_and_its_mapping(client):
    schemas = client.get("/api/v1/openapi.json").get_json()["components"]["schemas"]
    style = schemas["StyleTransferSubmit"]
    assert style["properties"]["mask"]["format"] == "binary"
    assert "mask" not in style["required"]
    pattern = style["properties"]["mask_styles"]["pattern"]
    assert re.fullmatch(pattern, "red:0,blue:keep,white:7")
    assert not re.fullmatch(pattern, "red:8") and not re.fullmatch(pattern, "#ff0000:0")
    assert "histogram" in style["properties"]["preserve_color"]["enum"]
    assert style["properties"]["color_only"]["type"] == "boolean"
    assert style["properties"]["histogram_weight"]["default"] == 0


def test_the_form_offers_a_mask_upload_and_the_region_mapping(client):
    html = client.get("/?kind=style_transfer").get_data(as_text=True)
    form = re.search(r'<form[^>]*id="form-style_transfer".*?</form>', html, re.S).group(0)
    assert re.search(r'<input type="file" name="mask"', form)
    assert re.search(r'<input type="text" name="mask_styles"', form)
    assert 'name="color_only"' in form and 'name="histogram_weight"' in form
