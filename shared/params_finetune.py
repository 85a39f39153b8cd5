"""Validation of the ``fine_tune`` and ``predict`` form fields of API.md.

Values the client leaves out stay out, except the few API.md fixes (backbone, strategy,
image size, validation split) and the seed, which is drawn and recorded; the engine
resolves strategy-dependent defaults (epochs, learning rate…) and records them in
``metrics.json`` and the checkpoint.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from shared.errors import InputError
from shared.params import COMMON_FIELDS, Field, _bool, _choice, _float, _int
from shared.settings import Settings

BACKBONES = ("vgg19", "resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0")
STRATEGIES = ("linear_probe", "full", "gradual")
SCHEDULES = ("cosine", "constant")
MAX_EPOCHS = 200
MAX_IMAGE_SIZE = 512
MAX_PREDICT_IMAGES = 256
JOB_ID = re.compile(r"^[0-9a-f]{32}$")

FINE_TUNE_FIELDS: dict[str, Field] = {
    "backbone": Field(_choice(BACKBONES), "pretrained network"),
    "strategy": Field(_choice(STRATEGIES), "what is trained"),
    "epochs": Field(lambda f, r, s: _int(f, r, 1, MAX_EPOCHS), "passes over the training set"),
    "batch_size": Field(lambda f, r, s: _int(f, r, 1, 512), "images per step"),
    "lr": Field(lambda f, r, s: _float(f, r, 1e-7, 10.0), "head learning rate"),
    "weight_decay": Field(lambda f, r, s: _float(f, r, 0.0, 1.0), "AdamW weight decay"),
    "image_size": Field(lambda f, r, s: _int(f, r, 32, MAX_IMAGE_SIZE), "input side in px"),
    "val_split": Field(lambda f, r, s: _float(f, r, 0.05, 0.5), "held-out fraction"),
    "augment": Field(lambda f, r, s: _bool(f, r), "random crops and flips"),
    "label_smoothing": Field(lambda f, r, s: _float(f, r, 0.0, 0.5), "cross-entropy smoothing"),
    "schedule": Field(_choice(SCHEDULES), "learning-rate schedule"),
    "early_stopping": Field(
        lambda f, r, s: _int(f, r, 0, MAX_EPOCHS), "patience in epochs, 0 = off"
    ),
    "seed": Field(lambda f, r, s: _int(f, r, 0, 2**32 - 1), "random seed"),
}
FINE_TUNE_DEFAULTS: dict[str, Any] = {
    "backbone": "vgg19",
    "strategy": "linear_probe",
    "image_size": 224,
    "val_split": 0.2,
}
PREDICT_FIELDS: dict[str, Field] = {
    "model": Field(lambda f, r, s: _job_id(f, r), "id of a succeeded fine_tune job"),
    "top_k": Field(lambda f, r, s: _int(f, r, 1, 100), "labels per image"),
}
PREDICT_DEFAULTS: dict[str, Any] = {"top_k": 3}


def _job_id(field: str, raw: str) -> str:
    value = raw.strip().lower()
    if not JOB_ID.match(value):
        raise InputError(
            f"{field} must be the id of a succeeded fine_tune job (32 hex digits), got {raw!r}",
            field=field,
        )
    return value


def _validate(
    kind: str,
    form: Mapping[str, str],
    settings: Settings,
    spec: dict[str, Field],
    defaults: dict[str, Any],
    file_fields: tuple[str, ...],
) -> dict[str, Any]:
    params = dict(defaults)
    for name, raw in form.items():
        if name in COMMON_FIELDS:
            continue
        parse = spec.get(name)
        if parse is None:
            hint = " (it is a file field: send it as a file upload)" if name in file_fields else ""
            raise InputError(f"unknown field {name!r} for {kind}{hint}", field=name)
        if raw.strip() != "":
            params[name] = parse.parse(name, raw, settings)
    return params


def validate_fine_tune_params(form: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    """Typed, bounded fine-tune parameters from form strings; a random seed if none."""
    params = _validate(
        "fine_tune", form, settings, FINE_TUNE_FIELDS, FINE_TUNE_DEFAULTS, ("dataset",)
    )
    params.setdefault("seed", secrets.randbelow(2**32))
    return params


def validate_predict_params(form: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    """``model`` (required) and ``top_k``; the model's existence is checked by the caller."""
    params = _validate("predict", form, settings, PREDICT_FIELDS, PREDICT_DEFAULTS, ("image",))
    if "model" not in params:
        raise InputError("model is required: the id of a succeeded fine_tune job", field="model")
    return params


def display_name(filename: str | None, fallback: str) -> str:
    """The uploaded file's base name, trimmed, for predictions.json (never used as a path)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or fallback
