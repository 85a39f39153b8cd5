"""``GET /api/v1/openapi.json`` (OpenAPI 3.1 of the whole API.md contract) and ``/docs``.

The description is built per request from this server's settings, so the bounds it
states (largest size, iterations, upload bytes) are the ones the server enforces. The
style-transfer fields come from ``shared.params.STYLE_FIELDS`` plus the types below; a
test checks the two name the same fields.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, jsonify, render_template

from shared.params import MAX_STYLES, MIN_SIZE, STYLE_DEFAULTS, STYLE_FIELDS, VGG_LAYERS
from shared.settings import Settings
from shared.states import ERROR_CODES, STATUSES
from web import db
from web.query import DEFAULT_LIMIT, KINDS, MAX_CURSOR_LENGTH, MAX_LIMIT

bp = Blueprint("openapi", __name__)
VERSION = "1.0.0"
JSON = "application/json"
REF = "#/components/schemas/"


def _enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def style_field_schemas(settings: Settings) -> dict[str, dict[str, Any]]:
    """JSON Schema of each style-transfer form field (all sent as multipart strings)."""
    number = {"type": "number", "minimum": 0}
    types: dict[str, dict[str, Any]] = {
        "size": {"type": "integer", "minimum": MIN_SIZE, "maximum": settings.max_size},
        "iterations": {"type": "integer", "minimum": 1, "maximum": settings.max_iterations},
        "preset": _enum("fast", "balanced", "quality"),
        "strength": {"type": "number", "minimum": 0, "maximum": 1},
        "content_weight": number,
        "style_weight": number,
        "tv_weight": number,
        "optimizer": _enum("lbfgs", "adam"),
        "init": _enum("content", "noise", "gray"),
        "pooling": _enum("max", "avg"),
        "preserve_color": _enum("none", "luminance", "statistics"),
        "style_scale": {"type": "number", "minimum": 0.1, "maximum": 4.0},
        "multiscale": {"type": "boolean"},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
        "output_format": _enum("png", "jpeg", "webp"),
        "weights": _enum("original", "torchvision"),
        "style_weights": {"type": "string", "pattern": r"^[0-9.eE+-]+(,[0-9.eE+-]+)*$"},
        "content_layer": _enum(*VGG_LAYERS),
        "style_layers": {"type": "string", "pattern": r"^relu[1-5]_[1-4](,relu[1-5]_[1-4])*$"},
        "style_layer_weights": {
            "type": "string",
            "pattern": r"^[0-9.eE+-]+(,[0-9.eE+-]+)*$",
        },
    }
    schemas = {}
    for name, spec in STYLE_FIELDS.items():
        schema = {**types[name], "description": spec.doc}
        if name in STYLE_DEFAULTS:
            schema["default"] = STYLE_DEFAULTS[name]
        schemas[name] = schema
    return schemas


def _file(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def _files(description: str, max_items: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": _file(description), "minItems": 1}
    if max_items:
        schema["maxItems"] = max_items
    return schema


def image_limits(settings: Settings) -> str:
    """The bounds every image field enforces at submit, from the header alone."""
    ratio = settings.max_aspect_ratio
    return (
        f"at most {settings.max_upload_bytes} bytes and {settings.max_pixels} pixels, "
        f"aspect ratio at most 1:{ratio} (long side <= {ratio} x short side)"
    )


def submit_schemas(settings: Settings) -> dict[str, dict[str, Any]]:
    """One multipart body schema per job kind (API.md, "Submit")."""
    common = {
        "webhook": {
            "type": "string",
            "format": "uri",
            "description": "URL POSTed (signed: Atelier-Signature) on the events below; "
            "loopback/private targets are refused unless the operator allows them",
        },
        "webhook_events": {"type": "string", "description": "comma list of start,completed"},
    }
    limit = image_limits(settings)
    style = {
        "kind": {"const": "style_transfer"},
        "content": _file(f"content image (JPEG/PNG/WebP…, sniffed); {limit}"),
        "style": _files(f"style image(s); {limit}", MAX_STYLES),
        **style_field_schemas(settings),
        **common,
    }
    fine_tune = {
        "kind": {"const": "fine_tune"},
        "dataset": _file(
            ".zip / .tar / .tar.gz of <class>/<image> folders, optionally under train/ and val/; "
            f"a member over {settings.max_pixels} pixels or more elongated than "
            f"1:{settings.max_aspect_ratio} is skipped and listed with the unreadable ones"
        ),
        "backbone": {
            **_enum("vgg19", "resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0"),
            "default": "vgg19",
            "description": "vgg19 uses bundled weights; others when their weights are cached",
        },
        "strategy": {**_enum("linear_probe", "full", "gradual"), "default": "linear_probe"},
        "epochs": {"type": "integer", "minimum": 1},
        "batch_size": {"type": "integer", "minimum": 1},
        "lr": {"type": "number", "exclusiveMinimum": 0, "description": "learning rate"},
        "image_size": {"type": "integer", "minimum": MIN_SIZE, "default": 224},
        "val_split": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.2,
            "description": "used when the archive has no val/ folder",
        },
        "augment": {"type": "boolean"},
        "seed": {"type": "integer", "minimum": 0},
        **common,
    }
    predict = {
        "kind": {"const": "predict"},
        "model": {"type": "string", "description": "id of a succeeded fine_tune job"},
        "image": _files(f"image(s) to label; {limit}"),
        "top_k": {"type": "integer", "minimum": 1, "default": 3},
        **common,
    }
    return {
        "StyleTransferSubmit": {
            "type": "object",
            "properties": style,
            "required": ["kind", "content", "style"],
        },
        "FineTuneSubmit": {
            "type": "object",
            "properties": fine_tune,
            "required": ["kind", "dataset"],
        },
        "PredictSubmit": {
            "type": "object",
            "properties": predict,
            "required": ["kind", "model", "image"],
        },
    }


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


TIME = {"type": ["string", "null"], "format": "date-time"}
FILE_SCHEMA = _object(
    {
        "name": {"type": "string"},
        "role": {"type": "string"},
        "content_type": {"type": "string"},
        "size": {"type": "integer"},
        "url": {"type": "string"},
    },
    ["name", "url"],
)
PROGRESS_SCHEMA = _object(
    {
        "current": {"type": "integer"},
        "total": {"type": "integer"},
        "percent": {"type": "number"},
        "stage": {"type": ["string", "null"]},
        "eta_seconds": {"type": ["number", "null"]},
        "loss": {"type": ["number", "null"]},
        "detail": {"type": ["object", "null"], "description": "kind-specific live numbers"},
        "history": {
            "type": "array",
            "items": {"type": "object"},
            "description": "single-job reads only: points {t, step, loss, …detail numbers}",
        },
    }
)
JOB_SCHEMA = _object(
    {
        "id": {"type": "string"},
        "kind": _enum("style_transfer", "fine_tune", "predict"),
        "status": _enum(*STATUSES),
        "owner": {"type": "string"},
        "params": {"type": "object"},
        "inputs": {"type": "array", "items": {"$ref": REF + "File"}},
        "queue_position": {"type": ["integer", "null"]},
        "progress": {"$ref": REF + "Progress"},
        "preview": _nullable(_object({"url": {"type": "string"}, "step": {"type": "integer"}})),
        "thumbnail": _nullable(_object({"url": {"type": "string"}})),
        "outputs": {"type": "array", "items": {"$ref": REF + "File"}},
        "metrics": {"type": "object"},
        "error": _nullable(
            _object({"code": _enum(*sorted(ERROR_CODES)), "message": {"type": "string"}})
        ),
        "attempts": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": TIME,
        "finished_at": TIME,
        "cancel_requested_at": TIME,
        "urls": _object(
            {"self": {"type": "string"}, "cancel": {"type": "string"}, "web": {"type": "string"}}
        ),
    },
    ["id", "kind", "status", "params", "progress", "outputs", "urls"],
)
ERROR_SCHEMA = _object(
    {
        "error": _object(
            {
                "code": {"type": "string"},
                "message": {"type": "string", "description": "what to do about it"},
                "field": {"type": "string", "description": "the input at fault, when one is"},
            },
            ["code", "message"],
        )
    },
    ["error"],
)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": REF + "Error"}}}}


def _job_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": REF + "Job"}}}}


JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
NOT_FOUND = _error("no such job (also another owner's job)")
UNAUTHORIZED = _error("no or invalid token (when auth is on)")


def _list_parameters() -> list[dict[str, Any]]:
    """The query of GET /api/v1/jobs, with the bounds that web.query enforces."""
    return [
        {
            "name": "status",
            "in": "query",
            "schema": _enum(*STATUSES),
            "description": "only jobs in this state; any other value is a 400",
        },
        {
            "name": "kind",
            "in": "query",
            "schema": _enum(*KINDS),
            "description": "only jobs of this kind; any other value is a 400",
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT,
            },
            "description": f"jobs per page, a whole number from 1 to {MAX_LIMIT} "
            f"(default {DEFAULT_LIMIT})",
        },
        {
            "name": "cursor",
            "in": "query",
            "schema": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_=-]+$",
                "maxLength": MAX_CURSOR_LENGTH,
            },
            "description": "opaque: the `next` value of the previous page, unchanged; "
            "anything else is a 400",
        },
    ]


def _paths() -> dict[str, Any]:
    submit_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "oneOf": [
                        {"$ref": REF + "StyleTransferSubmit"},
                        {"$ref": REF + "FineTuneSubmit"},
                        {"$ref": REF + "PredictSubmit"},
                    ],
                    "discriminator": {"propertyName": "kind"},
                },
                "encoding": {
                    "style": {"contentType": "image/*"},
                    "image": {"contentType": "image/*"},
                },
            }
        },
    }
    return {
        "/api/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a job",
                "description": "Stores and enqueues the job; answers at once. A refused request "
                "leaves no job, no queued message and no file.",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "same key from the same owner within 24 h returns the "
                        "first job (200) instead of creating another",
                    }
                ],
                "requestBody": submit_body,
                "responses": {
                    "202": {
                        **_job_response("accepted: the job, status queued"),
                        "headers": {
                            "Location": {
                                "schema": {"type": "string"},
                                "description": "/api/v1/jobs/<id>",
                            }
                        },
                    },
                    "200": _job_response("an earlier job with the same Idempotency-Key"),
                    "400": _error("bad parameter or unreadable file; `field` names it"),
                    "401": UNAUTHORIZED,
                    "413": _error("a file or the request is larger than the server allows"),
                    "415": _error("a file is not a supported image or archive"),
                    "429": {
                        **_error("over quota"),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                    "503": _error("broker and database unavailable; the job was not stored"),
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "List jobs, newest first",
                "description": "Every query parameter is checked before the query runs: "
                "a value outside its schema (control characters included) is a 400 whose "
                "`field` names the parameter. An empty value means no filter; parameters "
                "not listed here are ignored.",
                "parameters": _list_parameters(),
                "responses": {
                    "200": {
                        "description": "one page",
                        "content": {JSON: {"schema": {"$ref": REF + "JobList"}}},
                    },
                    "400": _error("bad filter, limit or cursor"),
                    "401": UNAUTHORIZED,
                },
            },
        },
        "/api/v1/jobs/{id}": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "getJob",
                "summary": "One job, with its progress history",
                "responses": {"200": _job_response("the job"), "404": NOT_FOUND},
            },
            "delete": {
                "operationId": "deleteJob",
                "summary": "Delete a finished job and its files",
                "responses": {
                    "204": {"description": "deleted"},
                    "404": NOT_FOUND,
                    "409": _error("the job has not finished; cancel it first"),
                },
            },
        },
        "/api/v1/jobs/{id}/cancel": {
            "parameters": [JOB_ID],
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a job (idempotent)",
                "description": "Queued jobs end at once; running ones at their next progress "
                "write (about a second). A finished job is returned unchanged.",
                "responses": {"200": _job_response("the job"), "404": NOT_FOUND},
            },
        },
        "/api/v1/jobs/{id}/files/{name}": {
            "parameters": [
                JOB_ID,
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "get": {
                "operationId": "getJobFile",
                "summary": "An input, preview, thumbnail or output file",
                "responses": {
                    "200": {
                        "description": "the file with its content type",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "404": NOT_FOUND,
                },
            },
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "getOpenAPI",
                "summary": "This description",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {}}}}
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Database, Redis and worker check",
                "security": [],
                "responses": {
                    "200": {
                        "description": "all up",
                        "content": {JSON: {"schema": {"$ref": REF + "Health"}}},
                    },
                    "503": {
                        "description": "names what is down",
                        "content": {JSON: {"schema": {"$ref": REF + "Health"}}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def build_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a server with ``settings``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Atelier API",
            "version": VERSION,
            "description": "Neural style transfer and transfer-learning fine-tuning as jobs. "
            "Every error is JSON {error: {code, message, field?}}; times are ISO 8601 UTC.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "tokens from `atelier token create OWNER`; with "
                    "ATELIER_AUTH=off every request is the owner `local`. A browser's unsafe "
                    "call authenticated by the login cookie (or, with auth off, carrying "
                    "Origin or Sec-Fetch-Site) also needs the page's CSRF token in the "
                    "X-CSRF-Token header; other origins are refused (403)",
                }
            },
            "schemas": {
                "Job": JOB_SCHEMA,
                "JobList": _object(
                    {
                        "results": {"type": "array", "items": {"$ref": REF + "Job"}},
                        "next": {"type": ["string", "null"]},
                    },
                    ["results", "next"],
                ),
                "File": FILE_SCHEMA,
                "Progress": PROGRESS_SCHEMA,
                "Error": ERROR_SCHEMA,
                "Health": _object(
                    {
                        "db": {"type": "string"},
                        "redis": {"type": "string"},
                        "workers": {"type": "integer"},
                    }
                ),
                **submit_schemas(settings),
            },
        },
    }


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _field_rows(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema["properties"].items():
        item = prop.get("items", prop)
        kind = item.get("type") or ("constant" if "const" in prop else "")
        if item.get("format") == "binary":
            kind = "file" + (", repeatable" if prop.get("type") == "array" else "")
        bounds = [f"{k} {prop[k]}" for k in ("minimum", "maximum") if k in prop]
        rows.append(
            {
                "name": name,
                "type": kind,
                "choices": ", ".join(prop.get("enum", [])) or prop.get("const", ""),
                "default": _show(prop.get("default", "")),
                "required": name in required,
                "notes": "; ".join(filter(None, [prop.get("description", ""), *bounds]))
                or item.get("description", ""),
            }
        )
    return rows


def docs_model(spec: dict[str, Any]) -> dict[str, Any]:
    """What the docs page lists: operations in order, and each kind's submit fields."""
    operations = []
    for path, item in spec["paths"].items():
        shared_params = item.get("parameters", [])
        for method in ("get", "post", "delete"):
            op = item.get(method)
            if op is None:
                continue
            operations.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "anchor": op["operationId"],
                    "summary": op["summary"],
                    "description": op.get("description", ""),
                    "parameters": shared_params + op.get("parameters", []),
                    "responses": op["responses"],
                }
            )
    schemas = spec["components"]["schemas"]
    kinds = [
        (name.removesuffix("Submit"), _field_rows(schemas[name]))
        for name in ("StyleTransferSubmit", "FineTuneSubmit", "PredictSubmit")
    ]
    return {"operations": operations, "kinds": kinds}


@bp.get("/api/v1/openapi.json")
def openapi_json():
    return jsonify(build_spec(db.settings()))


@bp.get("/docs")
def docs():
    spec = build_spec(db.settings())
    return render_template("docs.html", spec=spec, **docs_model(spec))
