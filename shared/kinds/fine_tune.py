"""``fine_tune``: train a classifier head (or more) on a pretrained backbone.

Defaults of None depend on ``strategy`` (:data:`STRATEGY_DEFAULTS`, which the engine
applies and records in ``metrics.json``); the others are fixed here. ``auto`` has no
defaults of its own: the engine first picks a concrete strategy from the dataset and
``max_seconds``, then applies that one's. A linear probe's ``weight_decay`` of None means
"chosen by cross-validation", since a fixed one fits some datasets and not others.
"""

from __future__ import annotations

from typing import Any

from shared.kinds.spec import FileField, KindSpec, Param
from shared.queue import GPU_QUEUE

BACKBONES = ("vgg19", "resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0")
STRATEGIES = ("linear_probe", "full", "gradual", "auto")
SCHEDULES = ("cosine", "constant")
# Which portable copies of the trained network a job also stores next to model.pt: each
# costs seconds and about the model's size again, so a job that only predicts here can
# skip them.
EXPORTS = ("all", "onnx", "torchscript", "none")
MAX_EPOCHS = 200
SEED_MAX = 2**32 - 1
_BACKBONE_TRAINING: dict[str, Any] = {
    "epochs": 6,
    "batch_size": 16,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "augment": True,
    "label_smoothing": 0.1,
    "early_stopping": 3,
}
# What a strategy means when the client leaves a field out.
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear_probe": {
        "epochs": 40,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": None,
        "augment": False,
        "label_smoothing": 0.0,
        "early_stopping": 10,
    },
    # full and gradual both train the backbone: the same budget suits both
    "full": dict(_BACKBONE_TRAINING),
    "gradual": dict(_BACKBONE_TRAINING),
    "auto": {},
}


def _by_strategy(name: str) -> str:
    def text(value: Any) -> str:
        if value is None:
            return "chosen by cross-validation"
        return str(value).lower() if isinstance(value, bool) else str(value)

    values = ", ".join(f"{s} {text(d[name])}" for s, d in STRATEGY_DEFAULTS.items() if name in d)
    return f"; default by strategy: {values}"


PARAMS = (
    Param(
        "backbone",
        "choice",
        "pretrained network; vgg19 uses bundled weights, the others "
        "their cached torchvision weights",
        default="vgg19",
        choices=BACKBONES,
    ),
    Param(
        "strategy",
        "choice",
        "what is trained: the head only, everything, block by block, or auto: chosen "
        "from the dataset's size and max_seconds (recorded in metrics.json)",
        default="linear_probe",
        choices=STRATEGIES,
    ),
    Param(
        "epochs",
        "int",
        "passes over the training set" + _by_strategy("epochs"),
        minimum=1,
        maximum=MAX_EPOCHS,
        expert=True,
    ),
    Param(
        "batch_size",
        "int",
        "images per step" + _by_strategy("batch_size"),
        minimum=1,
        maximum=512,
        expert=True,
    ),
    Param(
        "lr",
        "float",
        "head learning rate" + _by_strategy("lr"),
        minimum=1e-7,
        maximum=10.0,
        expert=True,
        label="Learning rate",
    ),
    Param(
        "lr_decay",
        "float",
        "full and gradual: the deepest backbone stage trains at lr × 0.1 and each earlier "
        "stage at lr_decay times the one above it (discriminative rates; 1 = one rate for "
        "the whole backbone)",
        default=1.0,
        minimum=0.1,
        maximum=1.0,
        expert=True,
        label="Per-stage LR decay",
    ),
    Param(
        "weight_decay",
        "float",
        "L2 penalty of the head (linear_probe) or AdamW weight decay"
        + _by_strategy("weight_decay"),
        minimum=0.0,
        maximum=1.0,
        expert=True,
    ),
    Param(
        "image_size",
        "int",
        "input side",
        default=224,
        minimum=32,
        maximum=512,
        unit="px",
        expert=True,
        label="Image size (px)",
    ),
    Param(
        "val_split",
        "float",
        "fraction held out for validation when the archive has no val/ folder",
        default=0.2,
        minimum=0.05,
        maximum=0.5,
        expert=True,
        label="Validation split",
    ),
    Param("augment", "bool", "random crops and flips" + _by_strategy("augment"), expert=True),
    Param(
        "label_smoothing",
        "float",
        "cross-entropy label smoothing" + _by_strategy("label_smoothing"),
        minimum=0.0,
        maximum=0.5,
        expert=True,
    ),
    Param(
        "schedule",
        "choice",
        "learning-rate schedule",
        default="cosine",
        choices=SCHEDULES,
        expert=True,
    ),
    Param(
        "early_stopping",
        "int",
        "patience in epochs, 0 = off" + _by_strategy("early_stopping"),
        minimum=0,
        maximum=MAX_EPOCHS,
        expert=True,
    ),
    Param(
        "max_seconds",
        "int",
        "time budget in seconds that strategy auto plans within; default 3600",
        minimum=10,
        maximum=86400,
        unit="s",
        expert=True,
        label="Time budget (s)",
    ),
    Param("seed", "int", "random seed", minimum=0, maximum=SEED_MAX, random=True, expert=True),
    Param(
        "export",
        "choice",
        "portable copies stored next to model.pt: model.onnx and model.torchscript.pt "
        "(all), one of them, or none (faster and smaller; predict runtime=onnx then "
        "refuses the model)",
        default="all",
        choices=EXPORTS,
        engine=False,
        expert=True,
        label="Export formats",
    ),
)

SPEC = KindSpec(
    name="fine_tune",
    title="Fine-tune",
    queue=GPU_QUEUE,
    doc="Train an image classifier on your own labelled folders.",
    files=(
        FileField(
            "dataset",
            "a .zip, .tar or .tar.gz of <class>/<image> folders, optionally under train/ and val/",
            accepts="archive",
        ),
    ),
    params=PARAMS,
    views=("fine_tune_report",),
)
