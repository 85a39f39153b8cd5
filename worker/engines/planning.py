"""Decisions made before optimising: scale pyramid, step budget and memory fit.

Kept apart from the optimisation loop so each rule is testable on its own and the web side
could, later, refuse an oversize job before it is queued.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch

from .imaging import fit_long_side

SCALE_RATIO = math.sqrt(2.0)
# Floats kept per input pixel for VGG19 up to relu5_1 with input gradients (saved ReLU
# outputs, pooled maps and max-pool indices), doubled for the backward pass's transients.
_BYTES_PER_PIXEL_FP32 = 4 * 380 * 2
_NET_BYTES = 60 * 2**20
MAX_LBFGS_HISTORY = 100
MIN_LBFGS_HISTORY = 5


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


def scale_dims(content_size: tuple[int, int], long_sides: list[int]) -> list[tuple[int, int]]:
    return [fit_long_side(*content_size, side) for side in long_sides]


def estimate_bytes(width: int, height: int, bf16: bool) -> int:
    """Rough peak memory of one optimiser step at (width, height)."""
    per_pixel = _BYTES_PER_PIXEL_FP32 // (2 if bf16 else 1)
    return _NET_BYTES + width * height * per_pixel


# Bytes of its GPU this process may use, when `atelier worker --jobs-per-gpu N` shares the
# card between N processes (worker/gpu_admission.py sets it); unset: the whole card.
SHARE_ENV = "ATELIER_GPU_MEMORY_SHARE"


def within_share(free: int, reserved: int, environ: Mapping[str, str] = os.environ) -> int:
    """CUDA's free bytes, but no more than this process's share minus what it holds: the
    rest of a shared card belongs to the neighbours, even while they are not using it."""
    share = environ.get(SHARE_ENV)
    if share:
        free = min(free, int(share) - reserved)
    return max(int(free), 0)


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's own count (within a shared card's share), else
    MemAvailable from /proc."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return within_share(free, torch.cuda.memory_reserved(device))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def lbfgs_history(numel: int, spare_bytes: int) -> int:
    """History pairs that fit in a quarter of the spare memory (each pair = 2 image copies)."""
    pair = 2 * numel * 4
    return max(MIN_LBFGS_HISTORY, min(MAX_LBFGS_HISTORY, spare_bytes // 4 // max(pair, 1)))
