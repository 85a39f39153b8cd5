"""Decisions made before optimising: scale pyramid, step budget and memory fit.

Kept apart from the optimisation loop so each rule is testable on its own. The pure
arithmetic (the scale pyramid, the step split, the memory estimate) lives in
shared/estimates.py, torch-free, so the web side's dry run predicts with the same rules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from shared.estimates import SCALE_RATIO, estimate_bytes, scale_sizes, steps_per_scale

from .imaging import fit_long_side

__all__ = [
    "MAX_LBFGS_HISTORY",
    "MIN_LBFGS_HISTORY",
    "SCALE_RATIO",
    "SHARE_ENV",
    "available_bytes",
    "estimate_bytes",
    "lbfgs_history",
    "scale_dims",
    "scale_sizes",
    "steps_per_scale",
    "within_share",
]

MAX_LBFGS_HISTORY = 100
MIN_LBFGS_HISTORY = 5


def scale_dims(content_size: tuple[int, int], long_sides: list[int]) -> list[tuple[int, int]]:
    return [fit_long_side(*content_size, side) for side in long_sides]


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
