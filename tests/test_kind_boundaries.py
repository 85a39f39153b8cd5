"""What the OpenAPI description promises about each field is what the server and the
engines do.

The values come from ``/api/v1/openapi.json`` itself, not from a hand-made list: every
value a field's schema allows (bounds, each choice, both booleans, generated values in
between) must parse at the edge and pass the engine's own validation, and every value
just outside must be refused at submit with a 400 naming the field. A drift between the
description, the parser and an engine fails here.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.kinds import KINDS
from tests.conftest import tiny_png
from tests.finetune_data import make_zip, shape_files

pytestmark = pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)
COMMON = {"kind", "webhook", "webhook_events", "priority"}
DERANDOMIZED = hsettings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def described(client) -> dict[str, dict[str, dict[str, Any]]]:
    """{kind: {field: schema}} of the submit body, parameters only (no files)."""
    doc = client.get("/api/v1/openapi.json").get_json()
    kinds = {}
    for schema in doc["components"]["schemas"].values():
        props = schema.get("properties", {})
        kind = props.get("kind", {}).get("const")
        if kind in KINDS:
            kinds[kind] = {
                name: prop
                for name, prop in props.items()
                if name not in COMMON and name not in KINDS[kind].file_names
            }
    assert set(kinds) == set(KINDS), "every kind has a submit schema"
    return kinds


def number_text(value: float, integer: bool) -> str:
    return str(int(value)) if integer else repr(float(value))


def edges(schema: dict[str, Any]) -> list[str]:
    """The values at the edges of what ``schema`` allows, as form strings."""
    if "enum" in schema:
        return [str(v) for v in schema["enum"]]
    kind = schema["type"]
    if kind == "boolean":
        return ["true", "false"]
    if kind in ("integer", "number"):
        return [number_text(schema[b], kind == "integer") for b in ("minimum", "maximum")]
    items = schema.get("x-items")
    if items and "enum" in items:
        return [items["enum"][0], ",".join(items["enum"])]
    if items:
        return [number_text(items["maximum"], False), f"{items['minimum']},{items['maximum']}"]
    assert schema["pattern"] == "^[0-9a-f]{32}$", schema
    return ["0" * 32, "f" * 32]


def inside(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Generated values that ``schema`` allows."""
    if "enum" in schema:
        return st.sampled_from([str(v) for v in schema["enum"]])
    kind = schema["type"]
    if kind == "boolean":
        return st.sampled_from(["true", "false", "1", "0"])
    if kind == "integer":
        return st.integers(schema["minimum"], schema["maximum"]).map(str)
    if kind == "number":
        low, high = schema["minimum"], schema["maximum"]
        return st.floats(low, high, allow_nan=False, allow_infinity=False).map(repr)
    items = schema.get("x-items")
    if items and "enum" in items:
        return st.lists(st.sampled_from(items["enum"]), min_size=1, unique=True).map(",".join)
    if items:
        numbers = st.floats(items["minimum"], items["maximum"], allow_nan=False)
        return (
            st.lists(numbers, min_size=1, max_size=5)
            .filter(lambda values: sum(values) > 0)
            .map(lambda values: ",".join(map(repr, values)))
        )
    return st.from_regex(schema["pattern"], fullmatch=True)


def outside(schema: dict[str, Any]) -> list[str]:
    """Values just beyond what ``schema`` allows."""
    if "enum" in schema:
        return ["not-a-choice", str(schema["enum"][0]) + "x"]
    kind = schema["type"]
    if kind == "boolean":
        return ["maybe", "2"]
    if kind == "integer":
        return [str(schema["minimum"] - 1), str(schema["maximum"] + 1), "1.5"]
    if kind == "number":
        low, high = float(schema["minimum"]), float(schema["maximum"])
        return [repr(math.nextafter(low, -math.inf)), repr(math.nextafter(high, math.inf)), "nan"]
    items = schema.get("x-items")
    if items and "enum" in items:
        first = items["enum"][0]
        return ["not-a-choice", f"{first},{first}"]
    if items:
        beyond = math.nextafter(float(items["maximum"]), math.inf)
        below = math.nextafter(float(items["minimum"]), -math.inf)
        return [repr(beyond), f"1,{below!r}", "0", "1,,x"]
    return ["0" * 31, "G" * 32]


def engine_accepts(kind: str, form: dict[str, str], settings) -> None:
    """Parse ``form`` as the server does, then run the engine's own validation on it."""
    spec = KINDS[kind]
    params = spec.validate(form, settings)
    engine_args = spec.engine_params(params)
    if kind == "style_transfer":
        from worker.engines.params import StyleParams

        styles = len(params.get("style_weights") or [1])
        StyleParams.resolve(styles, device="cpu", **engine_args)
    elif kind == "fine_tune":
        from worker.engines.finetune import FinetuneConfig

        FinetuneConfig.resolve(device="cpu", precision="fp32", **engine_args)
    else:
        spec.check_values(engine_args)


def paired(kind: str, name: str, value: str) -> dict[str, str]:
    """``name=value`` plus what a value needs beside it to be whole (one weight per
    default style layer)."""
    form = {name: value}
    if kind == "predict" and name != "model":
        form["model"] = "0" * 32  # required; whether it exists is the submit's check
    if kind == "sweep" and name not in ("strengths", "presets"):
        form["strengths"] = "0.5"  # a sweep needs a list to sweep
    if name == "style_layer_weights":
        layers = KINDS[kind].param("style_layers").choices
        form["style_layers"] = ",".join(layers[: len(value.split(","))])
    return form


def test_every_edge_the_description_allows_passes_the_engine(described, settings):
    for kind, fields in described.items():
        for name, schema in fields.items():
            for value in edges(schema):
                engine_accepts(kind, paired(kind, name, value), settings)


@DERANDOMIZED
@given(data=st.data())
def test_generated_values_the_description_allows_pass_the_engine(described, settings, data):
    kind = data.draw(st.sampled_from(sorted(described)))
    name = data.draw(st.sampled_from(sorted(described[kind])))
    value = data.draw(inside(described[kind][name]))
    engine_accepts(kind, paired(kind, name, value), settings)


def base_form(kind: str) -> dict[str, Any]:
    """A submission of ``kind`` that is whole apart from the field under test."""
    if kind == "style_transfer":
        return {
            "kind": kind,
            "content": (io.BytesIO(tiny_png()), "c.png"),
            "style": (io.BytesIO(tiny_png()), "s.png"),
        }
    if kind == "fine_tune":
        archive = make_zip(shape_files(per_class=2))
        return {"kind": kind, "dataset": (io.BytesIO(archive), "d.zip")}
    if kind == "predict":
        return {"kind": kind, "model": "0" * 32, "image": (io.BytesIO(tiny_png()), "i.png")}
    form: dict[str, Any] = {"kind": kind}
    for upload in KINDS[kind].files:
        form[upload.name] = (io.BytesIO(tiny_png()), f"{upload.name}.png")
    return form


def test_every_value_just_outside_is_refused_at_submit_naming_the_field(
    described, client, settings
):
    checked = 0
    for kind, fields in described.items():
        for name, schema in fields.items():
            for value in outside(schema):
                response = client.post("/api/v1/jobs", data={**base_form(kind), name: value})
                assert response.status_code == 400, (kind, name, value, response.get_json())
                error = response.get_json()["error"]
                assert error["field"] == name, (kind, name, value, error)
                checked += 1
    assert checked > 80
    assert client.get("/api/v1/jobs").get_json()["results"] == [], "a refused submit stores nothing"
