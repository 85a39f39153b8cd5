"""The OpenAPI description is valid, covers every route and field, and matches real answers."""

from __future__ import annotations

import re

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from shared.params import STYLE_FIELDS
from tests.conftest import style_form


def _validator(spec: dict, name: str) -> Draft202012Validator:
    root = {"components": spec["components"], "$ref": f"#/components/schemas/{name}"}
    return Draft202012Validator(root)


def test_the_description_is_valid_openapi_3_1(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    spec = response.json
    assert spec["openapi"] == "3.1.0"
    validate(spec)


def test_every_api_route_is_described(app, client):
    spec = client.get("/api/v1/openapi.json").json
    for rule in app.url_map.iter_rules():
        path = rule.rule
        if not (path.startswith("/api/v1") or path == "/healthz") or "<path:" in path:
            continue
        openapi_path = re.sub(r"<(?:\w+:)?job_id>", "{id}", path)
        openapi_path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", openapi_path)
        assert openapi_path in spec["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in spec["paths"][openapi_path], f"{method} {path}"


def test_submit_fields_are_the_servers_and_api_md_names(client, settings):
    schemas = client.get("/api/v1/openapi.json").json["components"]["schemas"]
    style = schemas["StyleTransferSubmit"]["properties"]
    assert set(style) - {"kind", "content", "style", "webhook", "webhook_events"} == set(
        STYLE_FIELDS
    )
    assert style["size"]["maximum"] == settings.max_size
    assert style["iterations"]["maximum"] == settings.max_iterations
    assert style["style"]["items"]["format"] == "binary"
    fine_tune = schemas["FineTuneSubmit"]["properties"]
    assert {
        "dataset",
        "backbone",
        "strategy",
        "epochs",
        "batch_size",
        "lr",
        "image_size",
        "val_split",
        "augment",
        "seed",
    } <= set(fine_tune)
    assert {"model", "image", "top_k"} <= set(schemas["PredictSubmit"]["properties"])


def test_real_answers_match_the_schemas(client):
    spec = client.get("/api/v1/openapi.json").json
    submitted = client.post(
        "/api/v1/jobs",
        data=style_form(),
        content_type="multipart/form-data",
    )
    job_schema = _validator(spec, "Job")
    job_schema.validate(submitted.json)
    job = client.get(submitted.headers["Location"]).json
    job_schema.validate(job)
    assert set(job) <= set(spec["components"]["schemas"]["Job"]["properties"])
    _validator(spec, "JobList").validate(client.get("/api/v1/jobs").json)
    bad = client.get("/api/v1/jobs?limit=0")
    assert bad.status_code == 400
    _validator(spec, "Error").validate(bad.json)
    client.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_docs_page_lists_every_operation_and_field(client):
    spec = client.get("/api/v1/openapi.json").json
    html = client.get("/docs").get_data(as_text=True)
    for item in spec["paths"].values():
        for method, op in item.items():
            if method != "parameters":
                assert f'id="{op["operationId"]}"' in html
    for name in STYLE_FIELDS:
        assert f"<code>{name}</code>" in html
    assert "<code>top_k</code>" in html and "<code>val_split</code>" in html
