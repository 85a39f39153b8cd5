"""The OpenAPI description is valid, covers every route and field, and matches real answers.

Each kind's submit schema is derived from its spec (shared/kinds): every parameter's
schema must be its ``Param.schema(settings)``, so there is no second table to drift.
"""

from __future__ import annotations

import re

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from shared.kinds import KINDS
from tests.conftest import style_form
from web.openapi import schema_name

COMMON = {"kind", "webhook", "webhook_events", "priority"}


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
    for name, spec in KINDS.items():
        properties = schemas[schema_name(name)]["properties"]
        assert set(properties) - COMMON == {p.name for p in spec.params} | set(spec.file_names)
    style = schemas["StyleTransferSubmit"]["properties"]
    assert style["size"]["maximum"] == settings.max_size
    assert style["iterations"]["maximum"] == settings.max_iterations
    assert style["style"]["items"]["format"] == "binary" and style["style"]["maxItems"] == 8
    fine_tune = schemas["FineTuneSubmit"]["properties"]
    assert {
        "dataset",
        "backbone",
        "strategy",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "image_size",
        "val_split",
        "augment",
        "label_smoothing",
        "schedule",
        "early_stopping",
        "seed",
    } <= set(fine_tune)
    for name in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "seed"):
        assert "maximum" in fine_tune[name], name
    predict = schemas["PredictSubmit"]
    assert {"model", "image", "top_k"} <= set(predict["properties"])
    assert predict["properties"]["image"]["maxItems"] == 256
    assert predict["required"] == ["kind", "image", "model"]
    assert schemas["StyleTransferSubmit"]["required"] == ["kind", "content", "style"]
    assert schemas["FineTuneSubmit"]["required"] == ["kind", "dataset"]


def test_every_param_schema_is_the_specs_own(client, settings):
    """No second table: each parameter's schema is Param.schema with this server's limits."""
    spec_doc = client.get("/api/v1/openapi.json").json
    schemas = spec_doc["components"]["schemas"]
    body = spec_doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]
    listed = [ref["$ref"] for ref in body["multipart/form-data"]["schema"]["oneOf"]]
    assert listed == [f"#/components/schemas/{schema_name(name)}" for name in KINDS]
    for name, spec in KINDS.items():
        properties = schemas[schema_name(name)]["properties"]
        assert properties["kind"] == {"const": name}
        for param in spec.params:
            assert properties[param.name] == param.schema(settings), (name, param.name)


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


def test_docs_page_names_every_param_of_every_kind(client, settings):
    html = client.get("/docs").get_data(as_text=True)
    for name, spec in KINDS.items():
        section = re.search(
            rf'<h3 id="fields-{schema_name(name).removesuffix("Submit")}">.*?</table>', html, re.S
        )
        assert section, name
        for field in [*spec.file_names, *(p.name for p in spec.params)]:
            assert f"<code>{field}</code>" in section.group(0), (name, field)
    size = KINDS["style_transfer"].param("size")
    assert f"32 to {settings.max_size}" in html and size.doc in html  # bounds and doc
