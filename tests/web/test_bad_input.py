"""Bad submits: a 4xx JSON error naming the field, no job row, no message, no file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Job
from tests.conftest import tiny_png


def _bomb_png() -> bytes:
    """A small PNG that declares more pixels than the server allows."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")
    return buffer.getvalue()


def _files(content=None, style=None) -> dict:
    data = {}
    if content is not None:
        data["content"] = (io.BytesIO(content), "content.png")
    if style is not None:
        data["style"] = (io.BytesIO(style), "style.png")
    return data


def _raw(content=None, style=None) -> dict:
    """Bytes, not open files: each parametrized run (one per database) uploads fresh ones."""
    return {"content": content, "style": style}


def _uploads(form: dict) -> dict:
    """Form values given as bytes (or lists of bytes) become fresh file uploads."""
    out = {}
    for key, value in form.items():
        if isinstance(value, bytes):
            out[key] = (io.BytesIO(value), f"{key}.png")
        elif isinstance(value, list):
            out[key] = [(io.BytesIO(v), f"{key}-{i}.png") for i, v in enumerate(value)]
        else:
            out[key] = value
    return out


GOOD = tiny_png()
CASES = [
    # (form fields, files, expected status, expected field)
    ({"kind": "style_transfer"}, _raw(style=GOOD), 400, "content"),
    ({"kind": "style_transfer"}, _raw(content=GOOD), 400, "style"),
    ({}, _raw(GOOD, GOOD), 400, "kind"),
    ({"kind": "painting"}, _raw(GOOD, GOOD), 400, "kind"),
    ({"kind": "style_transfer"}, _raw(b"not an image at all", GOOD), 415, "content"),
    ({"kind": "style_transfer"}, _raw(GOOD, b"%PDF-1.4 fake"), 415, "style"),
    # (a truncated image passes: submits read headers only; the worker refuses it, see
    # tests/web/test_image_bounds.py)
    ({"kind": "style_transfer"}, _raw(b"", GOOD), 400, "content"),
    ({"kind": "style_transfer"}, _raw(_bomb_png(), GOOD), 413, "content"),
    ({"kind": "style_transfer", "size": "0"}, _raw(GOOD, GOOD), 400, "size"),
    ({"kind": "style_transfer", "size": "100000"}, _raw(GOOD, GOOD), 400, "size"),
    ({"kind": "style_transfer", "size": "big"}, _raw(GOOD, GOOD), 400, "size"),
    ({"kind": "style_transfer", "iterations": "0"}, _raw(GOOD, GOOD), 400, "iterations"),
    ({"kind": "style_transfer", "iterations": "99999999"}, _raw(GOOD, GOOD), 400, "iterations"),
    ({"kind": "style_transfer", "strength": "1.5"}, _raw(GOOD, GOOD), 400, "strength"),
    ({"kind": "style_transfer", "strength": "nan"}, _raw(GOOD, GOOD), 400, "strength"),
    ({"kind": "style_transfer", "optimizer": "sgd"}, _raw(GOOD, GOOD), 400, "optimizer"),
    ({"kind": "style_transfer", "seed": "-1"}, _raw(GOOD, GOOD), 400, "seed"),
    ({"kind": "style_transfer", "style_weights": "1,2"}, _raw(GOOD, GOOD), 400, "style_weights"),
    ({"kind": "style_transfer", "colour": "red"}, _raw(GOOD, GOOD), 400, "colour"),
    ({"kind": "style_transfer", "style_scale": "0"}, _raw(GOOD, GOOD), 400, "style_scale"),
    ({"kind": "style_transfer", "content_weight": "-1"}, _raw(GOOD, GOOD), 400, "content_weight"),
    ({"kind": "style_transfer", "tv_weight": "inf"}, _raw(GOOD, GOOD), 400, "tv_weight"),
    (
        {"kind": "style_transfer", "preserve_color": "sepia"},
        _raw(GOOD, GOOD),
        400,
        "preserve_color",
    ),
    ({"kind": "style_transfer", "init": "photo"}, _raw(GOOD, GOOD), 400, "init"),
    ({"kind": "style_transfer", "pooling": "min"}, _raw(GOOD, GOOD), 400, "pooling"),
    ({"kind": "style_transfer", "multiscale": "maybe"}, _raw(GOOD, GOOD), 400, "multiscale"),
    ({"kind": "style_transfer", "output_format": "gif"}, _raw(GOOD, GOOD), 400, "output_format"),
    ({"kind": "style_transfer", "style_weights": "a,b"}, _raw(GOOD, GOOD), 400, "style_weights"),
    ({"kind": "style_transfer", "style_weights": "0"}, _raw(GOOD, GOOD), 400, "style_weights"),
    ({"kind": "style_transfer", "preset": "ultra"}, _raw(GOOD, GOOD), 400, "preset"),
    ({"kind": "style_transfer", "content_layer": "fc7"}, _raw(GOOD, GOOD), 400, "content_layer"),
    ({"kind": "style_transfer", "style_layers": "relu9_9"}, _raw(GOOD, GOOD), 400, "style_layers"),
    (
        {"kind": "style_transfer", "style_layers": "relu1_1,relu1_1"},
        _raw(GOOD, GOOD),
        400,
        "style_layers",
    ),
    (
        {"kind": "style_transfer", "style_layer_weights": "1,2"},
        _raw(GOOD, GOOD),
        400,
        "style_layer_weights",
    ),
    ({"kind": "style_transfer", "weights": "imagenet21k"}, _raw(GOOD, GOOD), 400, "weights"),
    ({"kind": "style_transfer", "seed": "4294967296"}, _raw(GOOD, GOOD), 400, "seed"),
    (
        {"kind": "style_transfer", "webhook_events": "start"},
        _raw(GOOD, GOOD),
        400,
        "webhook_events",
    ),
    ({"kind": "style_transfer", "content": "not-a-file"}, _raw(style=GOOD), 400, "content"),
    (
        {"kind": "style_transfer", "sketch": GOOD},  # a field no kind has
        _raw(GOOD, GOOD),
        400,
        "sketch",
    ),
    (
        {
            "kind": "style_transfer",
            "content": [GOOD, GOOD],
        },
        _raw(style=GOOD),
        400,
        "content",
    ),
    (
        {"kind": "style_transfer", "style": [GOOD] * 9},
        _raw(content=GOOD),
        400,
        "style",
    ),
]


@pytest.mark.parametrize(("form", "files", "status", "field"), CASES)
def test_bad_submit_is_refused_and_leaves_nothing(client, settings, form, files, status, field):
    before = redis.Redis.from_url(settings.redis_url).llen("gpu")
    response = client.post(
        "/api/v1/jobs",
        data={**_uploads(form), **_files(**files)},
        content_type="multipart/form-data",
    )
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == field and error["message"] and error["code"]
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert redis.Redis.from_url(settings.redis_url).llen("gpu") == before
    storage = Path(settings.storage_url.removeprefix("file://"))
    assert not storage.exists() or not any(storage.rglob("*.*"))


def test_too_large_request_is_413_json(settings, redis_url):
    import dataclasses

    from web import create_app

    small = dataclasses.replace(settings, max_request_bytes=2000)
    client = create_app({"ATELIER_SETTINGS": small, "TESTING": True}).test_client()
    response = client.post(
        "/api/v1/jobs",
        data={"kind": "style_transfer", **_files(tiny_png(256, 256), GOOD)},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "too_large"


def test_too_large_file_names_the_field(settings):
    import dataclasses

    from web import create_app

    small = dataclasses.replace(settings, max_upload_bytes=500)
    client = create_app({"ATELIER_SETTINGS": small, "TESTING": True}).test_client()
    response = client.post(
        "/api/v1/jobs",
        data={"kind": "style_transfer", **_files(GOOD, tiny_png(200, 200))},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["field"] in ("content", "style")


def test_unknown_job_is_404_json(client):
    for path in (
        "/api/v1/jobs/0123456789abcdef0123456789abcdef",
        "/api/v1/jobs/nope/files/result.png",
        "/api/v1/nothing-here",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.get_json()["error"]["code"] == "not_found"
    assert client.post("/api/v1/jobs/nope/cancel").status_code == 404


def test_bad_list_parameters(client):
    assert client.get("/api/v1/jobs?limit=0").get_json()["error"]["field"] == "limit"
    assert client.get("/api/v1/jobs?status=done").get_json()["error"]["field"] == "status"
    assert client.get("/api/v1/jobs?cursor=garbage").get_json()["error"]["field"] == "cursor"
