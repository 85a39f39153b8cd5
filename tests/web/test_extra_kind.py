"""A kind registered after start-up (a test's, or a module in ATELIER_KIND_MODULES) is
served from its spec alone: generic submit handler, OpenAPI schema, form, docs, filters."""

from __future__ import annotations

import dataclasses
import io
import re
import sys
from collections.abc import Iterator

import pytest

import web.kinds
from shared.db import session_scope
from shared.jobs import get_job
from shared.kinds import KINDS, FileField, KindSpec, Param
from shared.queue import CPU_QUEUE
from tests.conftest import tiny_png
from tests.finetune_data import make_zip, shape_files
from web import create_app
from web.kinds import HANDLERS, Prepared, SubmitContext, parse_params, read_inputs
from web.openapi import schema_name

SKETCH = KindSpec(
    name="sketch_test",
    title="Sketch",
    queue=CPU_QUEUE,
    doc="Draws a photo as lines (a kind only these tests register).",
    files=(
        FileField("photo", "the photo to draw"),
        FileField("extras", "more photos", max_count=3, required=False),
        FileField("bundle", "labelled shapes", accepts="archive", required=False),
    ),
    params=(
        Param("detail", "int", "strokes per line", default=5, minimum=1, maximum=10),
        Param("mode", "choice", "line style", default="pen", choices=("pen", "ink")),
        Param(
            "ratio", "float", "ink mix; default: from mode", minimum=0.0, maximum=1.0, expert=True
        ),
        Param("smooth", "bool", "smooth lines", expert=True),
        Param("blend", "floats", "one weight per photo", minimum=0.0, maximum=1.0, expert=True),
        Param("seed", "int", "random seed", minimum=0, maximum=99, random=True, expert=True),
    ),
)


@pytest.fixture
def sketch(monkeypatch) -> Iterator[KindSpec]:
    """SKETCH registered for one test; the registry and handlers restored after it."""
    monkeypatch.setitem(KINDS, SKETCH.name, SKETCH)
    monkeypatch.setattr(web.kinds, "_REGISTERED", dict(web.kinds._REGISTERED))
    yield SKETCH


def _stored(settings, job_id: str) -> list[str]:
    """The job's input files as stored (the API's ``inputs`` lists the built-in roles)."""
    with session_scope(settings.database_url) as session:
        return [f.name for f in get_job(session, job_id, "local").files]


def _submit(client, **fields):
    data = {"kind": "sketch_test", "photo": (io.BytesIO(tiny_png()), "me.png"), **fields}
    return client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")


def test_the_generic_handler_takes_a_kind_registered_after_start_up(client, settings, sketch):
    assert "sketch_test" in HANDLERS and len(HANDLERS) == len(KINDS)
    extras = [(io.BytesIO(tiny_png()), f"x{i}.png") for i in range(2)]
    bundle = (io.BytesIO(make_zip(shape_files(6))), "shapes.zip")
    response = _submit(client, extras=extras, bundle=bundle, detail="7", blend="0.5,0.5,0")
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    stored = _stored(settings, job["id"])
    assert stored == ["photo.png", "extras-1.png", "extras-2.png", "bundle.zip"]
    params = job["params"]
    assert params["detail"] == 7 and params["mode"] == "pen" and 0 <= params["seed"] <= 99
    assert params["blend"] == [0.5, 0.5, 0.0] and "ratio" not in params
    client.post(f"/api/v1/jobs/{job['id']}/cancel")


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"detail": "11"}, 400, "detail"),
        ({"mode": "crayon"}, 400, "mode"),
        ({"smooth": "maybe"}, 400, "smooth"),
        ({"photo": b"not an image"}, 415, "photo"),
        ({"extras": [tiny_png()] * 4}, 400, "extras"),
        ({"style": tiny_png()}, 400, "style"),
        ({"bundle": b"%PDF-1.4 not an archive"}, 415, "bundle"),
        ({"bundle": make_zip({"discs/a.png": tiny_png()})}, 400, "bundle"),
    ],
)
def test_its_fields_are_checked_by_its_spec(client, sketch, fields, status, field):
    """Bytes become fresh uploads here: each database's run sends its own."""
    uploads = {
        name: [(io.BytesIO(v), f"{i}.png") for i, v in enumerate(value)]
        if isinstance(value, list)
        else (io.BytesIO(value), "f.png")
        if isinstance(value, bytes)
        else value
        for name, value in fields.items()
    }
    response = _submit(client, **uploads)
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == field and field in error["message"]
    if field == "bundle":  # shared.archives says "dataset"; the reader names this field
        assert error["message"].startswith("bundle: ") and "dataset" not in error["message"]


def test_missing_file_is_named(client, sketch):
    response = client.post(
        "/api/v1/jobs", data={"kind": "sketch_test"}, content_type="multipart/form-data"
    )
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "photo"


def test_a_registered_handler_replaces_the_generic_one(client, settings, sketch):
    def prepare(ctx: SubmitContext) -> Prepared:
        params = parse_params(ctx)
        inputs = read_inputs(ctx, params)
        return Prepared({**params, "note": "handled"}, [(u.stored, u.data) for u in inputs])

    web.kinds.register_handler("sketch_test", prepare)
    response = _submit(client)
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    with session_scope(settings.database_url) as session:
        assert get_job(session, job_id, "local").params["note"] == "handled"
    client.post(f"/api/v1/jobs/{job_id}/cancel")


def test_openapi_form_docs_and_filters_list_it(client, settings, sketch):
    doc = client.get("/api/v1/openapi.json").get_json()
    schema = doc["components"]["schemas"][schema_name("sketch_test")]
    assert schema_name("sketch_test") == "SketchTestSubmit"
    assert schema["required"] == ["kind", "photo"]
    assert schema["properties"]["extras"]["maxItems"] == 3
    for param in SKETCH.params:
        assert schema["properties"][param.name] == param.schema(settings)
    body = doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert {"$ref": "#/components/schemas/SketchTestSubmit"} in body["schema"]["oneOf"]
    assert "sketch_test" in doc["components"]["schemas"]["Job"]["properties"]["kind"]["enum"]

    page = client.get("/?kind=sketch_test").get_data(as_text=True)
    form = re.search(r'<form[^>]*id="form-sketch_test".*?</form>', page, re.S).group(0)
    assert "hidden" not in re.search(r"<form[^>]*>", form).group(0)
    assert re.search(r'<input type="file" name="photo" accept="image/\*"\s+required>', form)
    assert re.search(r'<input type="file" name="extras" accept="image/\*" multiple\s*>', form)
    assert re.search(r'<input type="file" name="bundle" accept="\.zip,[^"]*"\s*>', form)
    assert re.search(r'name="detail" min="1" max="10"', form)
    expert = re.search(r'<details class="expert".*?</details>', form, re.S).group(0)
    assert re.findall(r'\bname="(\w+)"', expert) == ["ratio", "smooth", "blend", "seed"]
    assert 'placeholder="from mode"' in expert
    assert ">Start sketch</button>" in form

    docs = client.get("/docs").get_data(as_text=True)
    section = re.search(r'<h3 id="fields-SketchTest">.*?</table>', docs, re.S).group(0)
    for name in (*SKETCH.file_names, *(p.name for p in SKETCH.params)):
        assert f"<code>{name}</code>" in section
    assert client.get("/api/v1/jobs?kind=sketch_test").status_code == 200
    assert client.get("/jobs?kind=sketch_test").status_code == 200


@pytest.fixture
def plugin_app(settings, monkeypatch) -> Iterator:
    """An app whose settings name tests/web/kind_plugin.py; it is unloaded afterwards."""
    monkeypatch.setattr(web.kinds, "_REGISTERED", dict(web.kinds._REGISTERED))
    with_plugin = dataclasses.replace(settings, kind_modules="tests.web.kind_plugin")
    try:
        yield create_app({"ATELIER_SETTINGS": with_plugin, "TESTING": True})
    finally:
        KINDS.pop("plugin_echo", None)
        sys.modules.pop("tests.web.kind_plugin", None)


def test_kind_modules_register_their_kinds_and_handlers(plugin_app, settings):
    assert "plugin_echo" in KINDS
    client = plugin_app.test_client()
    response = client.post(
        "/api/v1/jobs",
        data={"kind": "plugin_echo", "times": "2", "picture": (io.BytesIO(tiny_png()), "p.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["params"] == {"times": 2, "handled_by": "plugin"}
    assert _stored(settings, job["id"]) == ["picture.png"]
    client.post(f"/api/v1/jobs/{job['id']}/cancel")
