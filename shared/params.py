"""Parameter schemas and validation for each job kind.

The web form and the JSON API both submit ``multipart/form-data`` strings; validation
turns them into typed, bounded values and names the field at fault. Engine-side
defaults that depend on the preset (iterations, loss weights) stay unset here and are
resolved, then recorded, by the engine.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import InputError
from shared.settings import Settings

COMMON_FIELDS = frozenset({"kind", "webhook", "webhook_events"})
MIN_SIZE = 32
MAX_STYLES = 8
# VGG19's ReLU layers a loss may read (the engine's weights.RELU_LAYERS; a test keeps the
# two equal, since this package imports no torch).
VGG_LAYERS = (
    "relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu3_4",
    "relu4_1", "relu4_2", "relu4_3", "relu4_4", "relu5_1",
)  # fmt: skip
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def _int(field: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise InputError(f"{field} must be a whole number, got {raw!r}", field=field) from None
    if not low <= value <= high:
        raise InputError(f"{field} must be between {low} and {high}, got {value}", field=field)
    return value


def _float(field: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise InputError(f"{field} must be a number, got {raw!r}", field=field) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InputError(f"{field} must be between {low} and {high}, got {raw!r}", field=field)
    return value


def _bool(field: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise InputError(f"{field} must be true or false, got {raw!r}", field=field)


def _choice(options: tuple[str, ...]) -> Callable[[str, str, Settings], str]:
    def parse(field: str, raw: str, _settings: Settings) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise InputError(
                f"{field} must be one of {', '.join(options)}, got {raw!r}", field=field
            )
        return value

    return parse


def _weights_list(field: str, raw: str, _settings: Settings) -> list[float]:
    parts = [p for p in raw.replace(" ", "").split(",") if p]
    if not parts:
        raise InputError(f"{field} must be comma-separated numbers", field=field)
    values = [_float(field, p, 0.0, 1e6) for p in parts]
    if sum(values) <= 0:
        raise InputError(f"{field} must contain at least one positive weight", field=field)
    return values


def _layer_list(field: str, raw: str, _settings: Settings) -> list[str]:
    parts = [p.strip().lower() for p in raw.split(",") if p.strip()]
    unknown = [p for p in parts if p not in VGG_LAYERS]
    if not parts or unknown:
        raise InputError(
            f"{field} must be comma-separated layers from {', '.join(VGG_LAYERS)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
            field=field,
        )
    if len(set(parts)) != len(parts):
        raise InputError(f"{field} must not repeat a layer", field=field)
    return parts


@dataclass(frozen=True)
class Field:
    parse: Callable[[str, str, Settings], Any]
    doc: str


STYLE_FIELDS: dict[str, Field] = {
    "size": Field(lambda f, r, s: _int(f, r, MIN_SIZE, s.max_size), "long side in px"),
    "iterations": Field(lambda f, r, s: _int(f, r, 1, s.max_iterations), "total optimiser steps"),
    "preset": Field(_choice(("fast", "balanced", "quality")), "speed/quality preset"),
    "strength": Field(lambda f, r, s: _float(f, r, 0.0, 1.0), "style vs content, 0-1"),
    "content_weight": Field(lambda f, r, s: _float(f, r, 0.0, 1e9), "expert override"),
    "style_weight": Field(lambda f, r, s: _float(f, r, 0.0, 1e12), "expert override"),
    "tv_weight": Field(lambda f, r, s: _float(f, r, 0.0, 1e9), "expert override"),
    "optimizer": Field(_choice(("lbfgs", "adam")), "optimiser"),
    "init": Field(_choice(("content", "noise", "gray")), "starting image"),
    "pooling": Field(_choice(("max", "avg")), "VGG pooling"),
    "preserve_color": Field(_choice(("none", "luminance", "statistics")), "colour handling"),
    "style_scale": Field(lambda f, r, s: _float(f, r, 0.1, 4.0), "style size / output size"),
    "multiscale": Field(lambda f, r, s: _bool(f, r), "coarse-to-fine"),
    "seed": Field(lambda f, r, s: _int(f, r, 0, 2**32 - 1), "random seed"),
    "output_format": Field(_choice(("png", "jpeg", "webp")), "result file format"),
    "weights": Field(_choice(("original", "torchvision")), "VGG19 weights"),
    "style_weights": Field(_weights_list, "one weight per style image"),
    "content_layer": Field(_choice(VGG_LAYERS), "VGG19 layer the content loss reads"),
    "style_layers": Field(_layer_list, "VGG19 layers the style loss reads, comma-separated"),
    "style_layer_weights": Field(_weights_list, "one weight per style layer"),
}
STYLE_DEFAULTS: dict[str, Any] = {
    "size": 512,
    "preset": "balanced",
    "strength": 0.5,
    "optimizer": "lbfgs",
    "init": "content",
    "pooling": "max",
    "preserve_color": "none",
    "style_scale": 1.0,
    "multiscale": True,
    "output_format": "png",
    "weights": "original",
}
STYLE_FILE_FIELDS = frozenset({"content", "style"})


def validate_kind(raw: str | None, kinds: tuple[str, ...]) -> str:
    """The job kind, one of ``kinds`` (the kinds this server has handlers for)."""
    if raw is None or raw.strip() == "":
        raise InputError(f"kind is required: use one of {', '.join(kinds)}", field="kind")
    kind = raw.strip()
    if kind not in kinds:
        raise InputError(
            f"kind {kind!r} is not supported; use one of {', '.join(kinds)}", field="kind"
        )
    return kind


def validate_style_params(form: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    """Typed, bounded style-transfer parameters from form strings; a random seed if none."""
    params: dict[str, Any] = dict(STYLE_DEFAULTS)
    for name, raw in form.items():
        if name in COMMON_FIELDS:
            continue
        spec = STYLE_FIELDS.get(name)
        if spec is None:
            hint = (
                " (it is a file field: send it as a file upload)"
                if name in STYLE_FILE_FIELDS
                else ""
            )
            raise InputError(f"unknown field {name!r} for style_transfer{hint}", field=name)
        if raw.strip() == "":
            continue
        params[name] = spec.parse(name, raw, settings)
    if "seed" not in params:
        params["seed"] = secrets.randbelow(2**32)
    layer_weights = params.get("style_layer_weights")
    layers = params.get("style_layers", DEFAULT_STYLE_LAYERS)
    if layer_weights is not None and len(layer_weights) != len(layers):
        raise InputError(
            f"style_layer_weights has {len(layer_weights)} values for {len(layers)} style "
            "layers: give one weight per layer in style_layers",
            field="style_layer_weights",
        )
    return params


def check_style_count(params: dict[str, Any], style_count: int) -> None:
    """style_weights, when given, must match the number of style images."""
    if style_count == 0:
        raise InputError("style is required: upload at least one style image", field="style")
    if style_count > MAX_STYLES:
        raise InputError(f"style: at most {MAX_STYLES} style images", field="style")
    weights = params.get("style_weights")
    if weights is not None and len(weights) != style_count:
        raise InputError(
            f"style_weights has {len(weights)} values for {style_count} style images",
            field="style_weights",
        )
