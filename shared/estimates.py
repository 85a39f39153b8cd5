"""How long a job will take and how much memory it will need, before it runs.

Torch-free, so the web side can answer a dry run (web/dry_run.py) without loading the
engines. The memory arithmetic is the engine's own: worker/engines/planning.py imports
:func:`estimate_bytes` and the scale-pyramid rules from here, so both sides compute one
fact. The time model is a power law per kind and device class (a :class:`Line` in
log-log space),

* style_transfer: ``seconds ≈ a × pixel-steps^b`` (Σ over the scale plan of w·h·steps),
* fine_tune: ``seconds ≈ a × image-passes^b`` (images × (image_size/224)² × passes),
* any other kind: ``seconds ≈ a × uploaded files^b``,

with ``a, b`` fit by least squares on finished jobs' recorded metrics (web/dry_run.py
collects them) and built-in defaults, measured on the shared 2-core CPU this project is
developed on, while fewer than :data:`MIN_FIT_JOBS` jobs of that kind and device class
have finished. ``benchmarks/estimate_accuracy.py`` measures how close the model comes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

SCALE_RATIO = math.sqrt(2.0)
# Floats kept per input pixel for VGG19 up to relu5_1 with input gradients (saved ReLU
# outputs, pooled maps and max-pool indices), doubled for the backward pass's transients.
BYTES_PER_PIXEL_FP32 = 4 * 380 * 2
NET_BYTES = 60 * 2**20
MIN_SIDE = 16  # four 2x poolings before relu5_1 must leave at least one pixel
FINETUNE_REFERENCE_SIZE = 224  # fine-tune image sizes are counted relative to this
# A fine-tune holds the backbone's weights, gradients and optimiser state (VGG19: ~550 MB
# of fp32 weights, three copies at most) besides one batch's activations.
FINETUNE_NET_BYTES = 3 * 550 * 2**20

DEVICE_CLASSES = ("cpu", "cuda")
MIN_FIT_JOBS = 4  # fewer finished jobs than this: the built-in coefficients answer


@dataclass(frozen=True)
class PresetSteps:
    """A style preset's step budget: the one place its numbers are written. The engine's
    presets (worker/engines/params.py ``PRESETS``) are built from these, so the dry run's
    plan and the engine's are the same plan."""

    final_steps: int
    growth: float
    min_scale: int = 128

    def iterations(self, scales: int) -> int:
        return round(sum(self.final_steps * self.growth**i for i in range(scales)))


PRESET_STEPS: dict[str, PresetSteps] = {
    "fast": PresetSteps(final_steps=10, growth=1.7),
    "balanced": PresetSteps(final_steps=24, growth=1.7),
    "quality": PresetSteps(final_steps=60, growth=1.6),
}


def scale_sizes(size: int, multiscale: bool, min_scale: int = 128) -> list[int]:
    """Long sides of the coarse-to-fine pyramid: ~√2 apart from ~min_scale up to ``size``.

    Tiny outputs (tests, thumbnails) start at half their size so the multi-scale path
    is still exercised; VGG needs ≥16 px for relu5_1 to have any extent.
    """
    start = min(min_scale, size // 2)
    if not multiscale or start < 16:
        return [size]
    count = math.ceil(math.log(size / start) / math.log(SCALE_RATIO) - 1e-6) + 1
    return [round(start * (size / start) ** (i / (count - 1))) for i in range(count)]


def steps_per_scale(total: int, scales: int, growth: float) -> list[int]:
    """Split ``total`` steps geometrically (coarse scale first), each scale ≥ 1 step.

    Scale i from the top gets ``growth`` times the steps of scale i + 1.
    """
    if total < scales:
        raise ValueError("need at least one step per scale")
    weights = [growth ** (scales - 1 - i) for i in range(scales)]
    raw = [total * w / sum(weights) for w in weights]
    steps = [max(1, math.floor(r)) for r in raw]
    steps[0] += total - sum(steps)
    return steps


def fit_long_side(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) with the longer side equal to ``long_side`` and the aspect ratio kept."""
    if width >= height:
        return long_side, max(1, round(height * long_side / width))
    return max(1, round(width * long_side / height)), long_side


def estimate_bytes(width: int, height: int, bf16: bool) -> int:
    """Rough peak memory of one style optimiser step at (width, height)."""
    per_pixel = BYTES_PER_PIXEL_FP32 // (2 if bf16 else 1)
    return NET_BYTES + width * height * per_pixel


def style_plan(
    params: dict[str, Any], content_size: tuple[int, int]
) -> tuple[list[tuple[int, int]], list[int]]:
    """The scale dims and steps the style engine will run (worker/engines/style_transfer.py
    ``plan_scales``), from the job's params and the content image's header size."""
    preset = PRESET_STEPS[params.get("preset") or "balanced"]
    sides = scale_sizes(int(params["size"]), bool(params.get("multiscale", True)), preset.min_scale)
    dims = [fit_long_side(*content_size, side) for side in sides]
    dims = [d for d in dims if min(d) >= MIN_SIDE] or dims[-1:]
    total = params.get("iterations") or preset.iterations(len(dims))
    dims = dims[-total:]
    return dims, steps_per_scale(total, len(dims), preset.growth)


def style_pixel_steps(dims: Sequence[tuple[int, int]], steps: Sequence[int]) -> float:
    """Σ w·h·steps: the work of a style job, which its time grows with."""
    return float(sum(w * h * n for (w, h), n in zip(dims, steps, strict=True)))


def finetune_passes(images: int, image_size: int, strategy: str, epochs: int) -> float:
    """Images × (image_size/224)² × passes through the backbone: a linear probe (and
    ``auto``, which starts with one) extracts features once, the others every epoch."""
    passes = 1 if strategy in ("linear_probe", "auto") else max(int(epochs), 1)
    return images * (image_size / FINETUNE_REFERENCE_SIZE) ** 2 * passes


def finetune_bytes(batch_size: int, image_size: int, bf16: bool) -> int:
    """Rough peak memory of a fine-tune step: weights and optimiser state plus one batch."""
    per_pixel = BYTES_PER_PIXEL_FP32 // (2 if bf16 else 1)
    return FINETUNE_NET_BYTES + batch_size * image_size * image_size * per_pixel


@dataclass(frozen=True)
class Line:
    """A straight line in log-log space, ``log(seconds) = intercept + slope × log(work)``,
    i.e. ``seconds = e^intercept × work^slope``; ``jobs`` is how many it was fit on (0: the
    built-in default).

    Why log-log rather than ``seconds = a + b × work``: small jobs are dominated by fixed
    and per-step costs and large ones by arithmetic, so a straight line fit on both is
    pulled by the large jobs' seconds and misses the small ones by a factor (on an idle
    2-core CPU it predicted 0 s for a 128 px job); a power law keeps the relative error
    even across sizes, which is what "within ±30 %" measures. Work below 1 (a colour-only
    job) counts as 1.
    """

    intercept: float
    slope: float
    jobs: int = 0

    def seconds(self, work: float) -> float:
        return math.exp(self.intercept + self.slope * math.log(max(work, 1.0)))


# Built-in coefficients. CPU: the log-log least-squares lines of
# benchmarks/estimate_accuracy.py over all its jobs on the 2-core development CPU while it
# was otherwise idle (benchmarks/results/estimate_accuracy.json). CUDA: not measured here;
# assumed 40x (style) and 20x (fine-tune) faster for the same work until finished CUDA
# jobs refit them. Other kinds: ~2 s per uploaded file on the CPU.
_STYLE_CPU = (-11.60, 1.019)
_FINETUNE_CPU = (-0.103, 0.327)
DEFAULT_LINES: dict[tuple[str, str], Line] = {
    ("style_transfer", "cpu"): Line(*_STYLE_CPU),
    ("style_transfer", "cuda"): Line(_STYLE_CPU[0] - math.log(40), _STYLE_CPU[1]),
    ("fine_tune", "cpu"): Line(*_FINETUNE_CPU),
    ("fine_tune", "cuda"): Line(_FINETUNE_CPU[0] - math.log(20), _FINETUNE_CPU[1]),
    ("*", "cpu"): Line(math.log(2.0), 1.0),
    ("*", "cuda"): Line(math.log(0.2), 1.0),
}


@dataclass(frozen=True)
class Observation:
    """One finished job: its kind, device class, work (as above) and seconds it took."""

    kind: str
    device: str
    work: float
    seconds: float


def device_class(device: str | None) -> str | None:
    """``cuda:0`` → ``cuda``; None for what the model does not know."""
    if not device:
        return None
    name = str(device).split(":", 1)[0].lower()
    return name if name in DEVICE_CLASSES else None


def least_squares(points: Sequence[tuple[float, float]]) -> Line | None:
    """The least-squares :class:`Line` through (work, seconds) in log-log space (points
    with work or seconds not above 0 are left out); None when it is undefined or not
    increasing (a model that says more work is faster is worse than the default)."""
    logs = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    n = len(logs)
    if n < 2:
        return None
    mean_x = sum(x for x, _ in logs) / n
    mean_y = sum(y for _, y in logs) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in logs)
    if sxx <= 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in logs) / sxx
    if slope <= 0:
        return None
    return Line(mean_y - slope * mean_x, slope, n)


def fit_lines(observations: Iterable[Observation]) -> dict[tuple[str, str], Line]:
    """A line per (kind, device class) with at least :data:`MIN_FIT_JOBS` observations."""
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for obs in observations:
        groups.setdefault((obs.kind, obs.device), []).append((obs.work, obs.seconds))
    lines = {}
    for key, points in groups.items():
        if len(points) >= MIN_FIT_JOBS:
            line = least_squares(points)
            if line is not None:
                lines[key] = line
    return lines


def line_for(lines: dict[tuple[str, str], Line], kind: str, device: str) -> Line:
    """The fitted line, else the built-in one of the kind, else the generic one."""
    return (
        lines.get((kind, device))
        or DEFAULT_LINES.get((kind, device))
        or DEFAULT_LINES[("*", device)]
    )
