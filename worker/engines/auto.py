"""``strategy=auto``: pick a concrete strategy from the dataset's size and the time budget.

Why these rules (benchmarks/finetune.py, ants vs. bees, 245 images): with a few hundred
images a frozen backbone's features and a cross-validated linear head hold up better on
unseen images than training the backbone, which has too little data to move its
millions of weights in a useful direction and costs 10–20× the time on a CPU. Training
the backbone is worth its cost only with many images per class, and only when the
estimated run fits ``max_seconds``. The cost model is deliberately rough (VGG19-sized
networks, forward ≈ 1 unit, training step ≈ 3); the reason recorded says what it saw.

Besides the strategy, ``auto`` picks the backbone's feature layers and how the head is
regularised, and records why: VGG19's average-pooled, L2-normalised relu5_4 (the best of
the layer/pooling variants measured, benchmarks/results/finetune_ablation.json), and a
head λ chosen by cross-validation whenever every class has images to spare for folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.kinds.fine_tune import STRATEGY_DEFAULTS

from .backbones import VGG_FEATURE_LAYERS
from .probe import L2_GRID, MAX_FOLDS

DEFAULT_BUDGET_SECONDS = 3600  # the worker's default soft time limit
FULL_MIN_PER_CLASS = 200  # fewer images per class: the probe generalises better
# Seconds per 224 px image through VGG19 (forward), by device kind.
FORWARD_SECONDS = {"cpu": 0.25, "cuda": 0.005}
TRAIN_STEP_FACTOR = 3.0


@dataclass(frozen=True)
class AutoChoice:
    strategy: str
    reason: str
    estimates: dict[str, float]
    feature_layers: tuple[str, ...] | None = None  # None: the backbone's only layer
    layers_reason: str = ""
    head: dict[str, Any] | None = None  # how the head's L2 is set, and why

    def record(self, budget: int) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "reason": self.reason,
            "max_seconds": budget,
            "estimated_seconds": self.estimates,
            "feature_layers": list(self.feature_layers or ()),
            "feature_layers_reason": self.layers_reason,
            "head": self.head,
        }


def feature_layers(backbone: str) -> tuple[tuple[str, ...] | None, str]:
    """The layers to tap and why: VGG19's measured best; torchvision's single one."""
    if backbone != "vgg19":
        return None, f"{backbone} has one feature layer, the input of its ImageNet classifier"
    return VGG_FEATURE_LAYERS, (
        "relu5_4 average-pooled and L2-normalised: the best k-fold accuracy of the variants "
        "measured; adding relu5_3, relu4_4 or max pooling lowered it"
    )


def head_regularisation(smallest_class: int | None, weight_decay: float | None) -> dict:
    """How the head's λ is set: given, cross-validated, or (no folds possible) fixed."""
    if weight_decay is not None:
        return {"l2": weight_decay, "reason": "weight_decay given"}
    folds = min(MAX_FOLDS, smallest_class) if smallest_class is not None else MAX_FOLDS
    if folds < 2:
        return {
            "l2": L2_GRID[len(L2_GRID) // 2],
            "reason": "a class has one training image: no folds to choose λ by, the grid's middle",
        }
    return {
        "l2": "cross-validated",
        "grid": list(L2_GRID),
        "folds": folds,
        "reason": f"lowest held-out loss over {folds} stratified folds of the training images",
    }


def estimate(strategy: str, images: int, image_size: int, device: str, epochs: int) -> float:
    """Rough seconds for a run: features once, plus backbone epochs when it trains."""
    per_image = FORWARD_SECONDS["cuda" if device.startswith("cuda") else "cpu"]
    per_image *= (image_size / 224) ** 2
    seconds = images * per_image
    if strategy != "linear_probe":
        seconds += epochs * images * per_image * (TRAIN_STEP_FACTOR + 1)
    return round(seconds, 1)


def choose(
    images: int,
    classes: int,
    image_size: int,
    device: str,
    budget: int | None,
    *,
    backbone: str = "vgg19",
    smallest_class: int | None = None,
    weight_decay: float | None = None,
) -> AutoChoice:
    """Strategy, feature layers and head regularisation for ``images`` labelled images in
    ``classes`` classes (the smallest with ``smallest_class``) within ``budget``."""
    layers, layers_reason = feature_layers(backbone)
    chosen = _strategy(images, classes, image_size, device, budget)
    head = None
    if chosen.strategy == "linear_probe":
        head = head_regularisation(smallest_class, weight_decay)
    return AutoChoice(chosen.strategy, chosen.reason, chosen.estimates, layers, layers_reason, head)


def _strategy(
    images: int, classes: int, image_size: int, device: str, budget: int | None
) -> AutoChoice:
    budget = budget or DEFAULT_BUDGET_SECONDS
    epochs = STRATEGY_DEFAULTS["full"]["epochs"]
    estimates = {
        s: estimate(s, images, image_size, device, epochs) for s in ("linear_probe", "full")
    }
    per_class = images / max(classes, 1)
    if per_class < FULL_MIN_PER_CLASS:
        reason = (
            f"{per_class:.0f} images per class (< {FULL_MIN_PER_CLASS}): a frozen backbone "
            "with a cross-validated head generalises better than training the backbone"
        )
        return AutoChoice("linear_probe", reason, estimates)
    if estimates["full"] > budget:
        reason = (
            f"training the backbone would take about {estimates['full']:.0f} s, over the "
            f"{budget} s budget; the frozen backbone takes about "
            f"{estimates['linear_probe']:.0f} s"
        )
        return AutoChoice("linear_probe", reason, estimates)
    reason = (
        f"{per_class:.0f} images per class and about {estimates['full']:.0f} s of the "
        f"{budget} s budget: enough data and time to train the whole network"
    )
    return AutoChoice("full", reason, estimates)
