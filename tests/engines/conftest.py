"""Tiny synthetic images for the engine tests (no dependency on ../shared/data)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from worker.engines.style_transfer import StyleParams, StyleProgress, StyleResult, stylize


def make_content(width: int = 64, height: int = 48) -> Image.Image:
    """Smooth colour gradients with a disc: structure for relu4_2, colour for chroma tests."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = xx / max(width - 1, 1)
    g = yy / max(height - 1, 1)
    disc = ((xx - width / 2) ** 2 + (yy - height / 2) ** 2) < (min(width, height) / 3) ** 2
    b = np.where(disc, 0.9, 0.2)
    arr = np.stack([r * 0.8 + 0.1, g * 0.6 + 0.2, b], axis=-1)
    return Image.fromarray((arr * 255).round().astype(np.uint8), "RGB")


def make_style(width: int = 72, height: int = 56, seed: int = 0) -> Image.Image:
    """High-contrast stripes plus noise: a texture whose Grams differ from the content's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    stripes = (np.sin((xx + yy) / 2.5) > 0).astype(np.float64)
    arr = np.stack([stripes, 1 - stripes, 0.5 * np.ones_like(stripes)], axis=-1)
    arr = np.clip(arr * 0.8 + rng.normal(0, 0.1, arr.shape), 0, 1)
    return Image.fromarray((arr * 255).round().astype(np.uint8), "RGB")


@pytest.fixture
def content() -> Image.Image:
    return make_content()


@pytest.fixture
def style() -> Image.Image:
    return make_style()


@pytest.fixture
def style2() -> Image.Image:
    return make_style(seed=1).transpose(Image.Transpose.ROTATE_90)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny images gain nothing from intra-op threads, and on a shared 2-core machine
    oversubscribed OpenMP barriers make each step several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_style(
    content: Image.Image,
    styles: list[Image.Image],
    on_progress: Callable[[StyleProgress], None] | None = None,
    precision: str = "auto",
    **overrides: Any,
) -> StyleResult:
    """``stylize`` with params resolved from keywords, as a job's runner does."""
    params = StyleParams.resolve(len(styles), **overrides)
    return stylize(content, styles, params, on_progress=on_progress, precision=precision)
