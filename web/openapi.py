"""``GET /api/v1/openapi.json`` (OpenAPI 3.1 of the whole HTTP API) and ``/docs``.

The description is built per request from this server's settings, so the bounds it
states (largest size, iterations, upload bytes) are the ones the server enforces. Each
kind's submit body is derived from its spec (shared/kinds): one schema per registered
kind, each parameter's schema being its ``Param.schema(settings)``; nothing here lists
a kind's fields a second time.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template

from shared.kinds import KINDS, FileField, KindSpec
from shared.settings import Settings
from shared.states import ERROR_CODES, STATUSES
from shared.webhooks import PROGRESS_INTERVAL
from web import db
from web.events import (
    MAX_LAST_EVENT_ID,
    PROGRESS_MIN_GAP,
    RECHECK_SECONDS,
    STREAM_MAX_SECONDS,
)
from web.kinds.describe import param_rows
from web.query import DEFAULT_LIMIT, MAX_CURSOR_LENGTH, MAX_LIMIT
from web.queues import PRIORITY_SCHEMA
from web.queues import openapi_paths as queue_paths
from web.submit import MAX_PREFER_LENGTH, MAX_PREFER_WAIT

bp = Blueprint("openapi", __name__)
VERSION = "1.0.0"
JSON = "application/json"
REF = "#/components/schemas/"
COMMON_FIELDS: dict[str, dict[str, Any]] = {
    "webhook": {
        "type": "string",
        "format": "uri",
        "description": "URL POSTed (signed: Atelier-Signature) on the events below; "
        "loopback/private targets are refused unless the operator allows them",
    },
    "webhook_events": {
        "type": "string",
        "description": "comma list of start,completed,progress,output (default "
        f"start,completed); progress and output (a new preview) come at most every "
        f"{PROGRESS_INTERVAL:g} s per job",
    },
    "priority": PRIORITY_SCHEMA,
}


def _enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def schema_name(kind: str) -> str:
    """``style_transfer`` → ``StyleTransferSubmit``."""
    return "".join(part.capitalize() for part in kind.split("_")) + "Submit"


def image_limits(settings: Settings) -> str:
    """The bounds every image field enforces at submit, from the header alone."""
    ratio = settings.max_aspect_ratio
    return (
        f"at most {settings.max_upload_bytes} bytes and {settings.max_pixels} pixels, "
        f"aspect ratio at most 1:{ratio} (long side <= {ratio} x short side)"
    )


def archive_limits(settings: Settings) -> str:
    """What an archive field holds to: the request cap, and its images' own bounds."""
    return (
        f"at most {settings.max_request_bytes} bytes; a member over {settings.max_pixels} "
        f"pixels or more elongated than 1:{settings.max_aspect_ratio} is skipped and listed "
        "with the unreadable ones"
    )


def file_schema(field: FileField, settings: Settings) -> dict[str, Any]:
    """One upload (a binary string), or an array of them for a repeatable field."""
    if field.accepts == "image":
        text = f"{field.doc} (JPEG/PNG/WebP…, sniffed); {image_limits(settings)}"
    else:
        text = f"{field.doc}; {archive_limits(settings)}"
    one = {"type": "string", "format": "binary", "description": text}
    if field.max_count == 1:
        return one
    return {"type": "array", "items": one, "minItems": 1, "maxItems": field.max_count}


def submit_schema(spec: KindSpec, settings: Settings) -> dict[str, Any]:
    """The multipart body of one kind (``POST /api/v1/jobs``): its files, params and webhook."""
    properties: dict[str, Any] = {"kind": {"const": spec.name}}
    properties.update({f.name: file_schema(f, settings) for f in spec.files})
    properties.update({p.name: p.schema(settings) for p in spec.params})
    properties.update(COMMON_FIELDS)
    required = ["kind"]
    required += [f.name for f in spec.files if f.required]
    required += [p.name for p in spec.params if p.required]
    return {
        "type": "object",
        "description": f"{spec.title}: {spec.doc}",
        "properties": properties,
        "required": required,
    }


def submit_schemas(settings: Settings) -> dict[str, dict[str, Any]]:
    """One multipart body schema per registered job kind."""
    return {schema_name(name): submit_schema(spec, settings) for name, spec in KINDS.items()}


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


DRY_RUN = {
    "name": "dry_run",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["true", "false"]},
    "description": "true: run every check of the submit (same 4xx) and answer 200 with an "
    "estimate (DryRun) instead of creating the job: no row, no file, no message, and no "
    "count against the submit rate limit or quotas; a value other than true/false is a "
    "400 naming dry_run",
}
_DEVICE_ESTIMATE = _object(
    {
        "seconds": {"type": "number", "description": "predicted run time"},
        "peak_bytes": {
            "type": ["integer", "null"],
            "description": "the engine's peak memory estimate",
        },
        "fit_on_jobs": {
            "type": "integer",
            "description": "finished jobs the time model was fit on (0: built-in default)",
        },
    },
    ["seconds", "peak_bytes", "fit_on_jobs"],
)
DRY_RUN_SCHEMA = _object(
    {
        "valid": {"type": "boolean", "const": True},
        "kind": {"type": "string"},
        "params": {"type": "object", "description": "the params the job would get"},
        "estimate": {
            "type": "object",
            "additionalProperties": _DEVICE_ESTIMATE,
            "description": "per device class (cpu, cuda); a sweep's: the sum of its "
            "children's seconds, each estimated as that style_transfer job alone, and the "
            "largest child's peak memory",
        },
        "children": {
            "type": "integer",
            "minimum": 1,
            "description": "a sweep's only: how many child jobs it would create",
        },
        "runnable": {
            "type": "boolean",
            "description": "a live worker consumes the job's queue (a sweep: its children's "
            "queue and its own)",
        },
        "workers": _object(
            {
                "connected": {"type": "integer", "description": "live worker nodes"},
                "serving_queue": {
                    "type": "integer",
                    "description": "live worker nodes that consume the job's queue (a "
                    "sweep: its children's)",
                },
                "device_classes": {
                    "type": ["array", "null"],
                    "items": {"type": "string", "enum": ["cpu", "cuda", "auto"]},
                    "description": "what those nodes run jobs on (auto: CUDA where the "
                    "node sees a GPU, else the CPU)",
                },
            },
            ["connected"],
        ),
        "queue_position": {
            "type": "integer",
            "minimum": 1,
            "description": "the place it would take in its queue (a sweep: its children's)",
        },
        "basis": {"type": "object", "description": "how the estimate was made"},
    },
    ["valid", "kind", "params", "estimate", "runnable", "workers", "queue_position", "basis"],
)


def _job_schema() -> dict[str, Any]:
    """A job as the API returns it; its kind is one of the kinds registered now."""
    return _object(
        {
            "id": {"type": "string"},
            "kind": _enum(*KINDS),
            "status": _enum(*STATUSES),
            "owner": {"type": "string"},
            "params": {"type": "object"},
            "priority": {
                **{k: v for k, v in PRIORITY_SCHEMA.items() if k != "default"},
                "description": "as submitted: higher runs first, owners take turns within one",
            },
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
            "parent_id": {
                "type": ["string", "null"],
                "description": "a sweep's child: the id of its sweep",
            },
            "children": {
                "type": "array",
                "items": {"type": "string"},
                "description": "a sweep: its children's ids, in the contact sheet's grid order",
            },
            "urls": _object(
                {
                    "self": {"type": "string"},
                    "cancel": {"type": "string"},
                    "web": {"type": "string"},
                }
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
            "name": "parent",
            "in": "query",
            "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "description": "only the children of this sweep (a job id); any other value is a 400",
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


def _submit_body() -> dict[str, Any]:
    """One of the registered kinds' bodies, told apart by ``kind``; images sent as images."""
    images = {f.name for spec in KINDS.values() for f in spec.files if f.accepts == "image"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "oneOf": [{"$ref": REF + schema_name(kind)} for kind in KINDS],
                    "discriminator": {
                        "propertyName": "kind",
                        "mapping": {kind: REF + schema_name(kind) for kind in KINDS},
                    },
                },
                "encoding": {name: {"contentType": "image/*"} for name in sorted(images)},
            }
        },
    }


PREFER_WAIT = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": MAX_PREFER_LENGTH},
    "description": f"`wait=N` (RFC 7240), N whole seconds 0-{MAX_PREFER_WAIT}: answer with the "
    "finished job (201) when it ends within N s, else 202 as without it; Preference-Applied "
    "says it was honoured. Other preferences are ignored; a bad wait value is a 400 naming "
    "Prefer. A web process that serves its most streams and waits answers 202 at once.",
}


def _events_path() -> dict[str, Any]:
    """``GET /api/v1/jobs/{id}/events``, with the bounds web/events.py keeps."""
    return {
        "parameters": [JOB_ID],
        "get": {
            "operationId": "streamJobEvents",
            "summary": "The job's status, progress and previews as server-sent events",
            "description": "text/event-stream. First a `status` event with the job as "
            "GET /api/v1/jobs/{id} answers it, then `status` (the job, on each change), "
            f"`progress` (the job's progress, at most every {PROGRESS_MIN_GAP} s), `preview` "
            "({url, step}, when a new preview is stored) and, when the job ends, `end` "
            "({status}: the final status, or `deleted`), after which the stream closes. "
            "Event ids are the job's increasing event numbers; a reconnect with "
            "Last-Event-ID gets the current state only if it changed since. A comment every "
            f"{int(RECHECK_SECONDS)} s keeps proxies open; a stream lasts at most "
            f"{int(STREAM_MAX_SECONDS)} s, then EventSource reconnects by itself.",
            "parameters": [
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {
                        "type": "string",
                        "pattern": "^[0-9]*$",
                        "maxLength": MAX_LAST_EVENT_ID,
                    },
                    "description": "the id of the last event received (EventSource sends it "
                    f"on a reconnect): up to {MAX_LAST_EVENT_ID} digits, else a 400 naming it",
                }
            ],
            "responses": {
                "200": {
                    "description": "the event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "204": {"description": "a reconnect to a job that ended and was seen: done"},
                "400": _error("bad Last-Event-ID"),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "503": {
                    **_error("this web process serves its most streams; poll the job"),
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                },
            },
        },
    }


def _paths() -> dict[str, Any]:
    submit_body = _submit_body()
    return {
        "/api/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a job",
                "description": "Stores and enqueues the job; answers at once (or, with "
                "Prefer: wait=N, when the job ends or N s passed). A refused request "
                "leaves no job, no queued message and no file.",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "same key from the same owner within 24 h returns the "
                        "first job (200) instead of creating another",
                    },
                    PREFER_WAIT,
                    DRY_RUN,
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
                    "200": {
                        "description": "an earlier job with the same Idempotency-Key "
                        "(finished, with Preference-Applied, when Prefer: wait=N saw it end); "
                        "with dry_run=true: the estimate (DryRun), nothing stored",
                        "content": {
                            JSON: {
                                "schema": {
                                    "anyOf": [{"$ref": REF + "Job"}, {"$ref": REF + "DryRun"}]
                                }
                            }
                        },
                    },
                    "201": {
                        **_job_response(
                            "Prefer: wait=N and the job ended within N s: the finished job"
                        ),
                        "headers": {
                            "Preference-Applied": {
                                "schema": {"type": "string"},
                                "description": "wait=N",
                            }
                        },
                    },
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
        "/api/v1/jobs/{id}/events": _events_path(),
        **queue_paths(),
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
                "Job": _job_schema(),
                "JobList": _object(
                    {
                        "results": {"type": "array", "items": {"$ref": REF + "Job"}},
                        "next": {"type": ["string", "null"]},
                    },
                    ["results", "next"],
                ),
                "File": FILE_SCHEMA,
                "DryRun": DRY_RUN_SCHEMA,
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


def _row(name: str, kind: str, notes: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "bounds": "",
        "default": "",
        "unit": "",
        "required": required,
        "notes": notes,
    }


def _file_rows(spec: KindSpec, settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for field in spec.files:
        schema = file_schema(field, settings)
        many = f"files, up to {field.max_count}" if field.max_count > 1 else "file"
        notes = schema.get("items", schema)["description"]
        rows.append(_row(field.name, f"{field.accepts} {many}", notes, field.required))
    return rows


def kind_docs(settings: Settings) -> list[dict[str, Any]]:
    """Each registered kind with its fields, from its spec: files, params, webhook."""
    kinds = []
    for name, spec in KINDS.items():
        rows = [_row("kind", f"constant: {name}", spec.doc, required=True)]
        rows += _file_rows(spec, settings) + param_rows(spec, settings)
        rows += [_row(field, "string", s["description"]) for field, s in COMMON_FIELDS.items()]
        anchor = "fields-" + schema_name(name).removesuffix("Submit")
        kinds.append({"name": name, "title": spec.title, "anchor": anchor, "rows": rows})
    return kinds


def docs_model(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
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
    return {"operations": operations, "kinds": kind_docs(settings)}


@bp.get("/api/v1/openapi.json")
def openapi_json():
    return jsonify(build_spec(db.settings()))


@bp.get("/docs")
def docs():
    settings = db.settings()
    spec = build_spec(settings)
    return render_template("docs.html", spec=spec, **docs_model(spec, settings))
