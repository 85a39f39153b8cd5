"""``strategy=auto``: pick a concrete strategy from the dataset's size and the time budget.

Why these rules (benchmarks/finetune.py, ants vs. bees, 245 images): with a few hundred
images a frozen backbone's features and a cross-validated linear head hold up better on
unseen images than training the backbone, which has too little data to move its
millions of weights in a useful direction and costs 10–20× the time on a CPU. Training
the backbone is worth its cost only with many images per class, and only when the
estimated run fits ``max_seconds``. The cost model is deliberately rough (VGG19-sized
networks, forward ≈ 1 unit, training step ≈ 3); the reason recorded says what it saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.kinds.fine_tune import STRATEGY_DEFAULTS

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

    def record(self, budget: int) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "reason": self.reason,
            "max_seconds": budget,
            "estimated_seconds": self.estimates,
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
    images: int, classes: int, image_size: int, device: str, budget: int | None
) -> AutoChoice:
    """The strategy for ``images`` labelled images in ``classes`` classes within ``budget``."""
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
