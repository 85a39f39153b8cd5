"""Colour tools on real images and the real engine: histogram matching, preserve_color=
histogram, color_only (no network) and the histogram loss (Risser et al. 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engines import colour, imaging, weights
from worker.engines.errors import InvalidInput
from worker.engines.losses import HISTOGRAM_LAYERS, histogram_error, quantile_table
from worker.engines.style_transfer import StyleProgress

from .conftest import make_content, make_style, run_style

FAST = {"size": 48, "iterations": 6, "multiscale": False, "seed": 0, "device": "cpu"}


def sorted_channels(image: Image.Image) -> np.ndarray:
    return np.sort(np.asarray(image, float).reshape(-1, 3), axis=0)


def histogram_distance(a: Image.Image, b: Image.Image) -> float:
    """Mean gap between the two images' per-channel quantile functions, in grey levels."""
    qs = np.linspace(0, 1, 101)
    return float(
        np.mean(
            [
                np.abs(
                    np.quantile(np.asarray(a, float)[..., c], qs)
                    - np.quantile(np.asarray(b, float)[..., c], qs)
                ).mean()
                for c in range(3)
            ]
        )
    )


def test_match_histograms_takes_the_references_palette():
    source, reference = make_content(64, 48), make_style(72, 56)
    out = colour.match_histograms(imaging.to_tensor(source), imaging.to_tensor(reference))
    matched = imaging.to_pil(out)
    assert matched.size == source.size
    before = histogram_distance(source, reference)
    assert histogram_distance(matched, reference) < 0.15 * before


def test_flat_areas_stay_flat():
    """Equal source pixels map to equal outputs (ties share a rank)."""
    two = Image.new("RGB", (40, 30), (30, 60, 200))
    two.paste((220, 200, 40), (0, 0, 20, 30))
    out = imaging.to_pil(
        colour.match_histograms(imaging.to_tensor(two), imaging.to_tensor(make_style()))
    )
    assert len(np.unique(np.asarray(out).reshape(-1, 3), axis=0)) == 2


def test_pooled_reference_follows_the_blend_weights():
    red = imaging.to_tensor(Image.new("RGB", (32, 32), (255, 0, 0)))
    blue = imaging.to_tensor(Image.new("RGB", (16, 16), (0, 0, 255)))
    pooled = colour.pooled_reference([red, blue], [0.75, 0.25])
    assert pooled[0].mean().item() == pytest.approx(0.75, abs=0.01)
    only_red = colour.pooled_reference([red, blue], [1.0, 0.0])
    assert only_red[2].max().item() == 0


def test_color_only_loads_no_network_and_recolours_the_content():
    content, style = make_content(64, 48), make_style()
    weights.clear_cache()
    seen: list[StyleProgress] = []
    result = run_style(
        content, [style], size=512, color_only=True, seed=3, device="cpu", on_progress=seen.append
    )
    assert not weights._nets, "color_only must not build VGG19"
    assert result.image.size == (512, 384)
    assert result.metrics["scales"] == [] and result.metrics["params"]["color_only"] is True
    assert [p.step for p in seen] == [1] and seen[0].image() is result.image
    small = result.image.resize(content.size, Image.Resampling.BILINEAR)
    assert histogram_distance(small, style) < 0.3 * histogram_distance(content, style)
    again = run_style(content, [style], size=512, color_only=True, seed=3, device="cpu")
    assert again.image.tobytes() == result.image.tobytes()


def test_color_only_refuses_preserving_the_content_colours():
    with pytest.raises(InvalidInput) as info:
        run_style(
            make_content(), [make_style()], color_only=True, preserve_color="histogram", seed=0
        )
    assert info.value.param == "color_only"


def mean_colour_shift(image: Image.Image, content: Image.Image) -> float:
    """Largest per-channel shift of the mean colour from the content's, in grey levels."""
    here = np.asarray(image, float).reshape(-1, 3).mean(0)
    there = np.asarray(content.resize(image.size), float).reshape(-1, 3).mean(0)
    return float(np.abs(here - there).max())


def test_preserve_color_histogram_keeps_the_content_palette():
    content, style = make_content(), make_style()
    run = {**FAST, "iterations": 12, "strength": 0.9}
    plain = run_style(content, [style], **run)
    kept = run_style(content, [style], preserve_color="histogram", **run)
    style_small = style.resize(kept.image.size, Image.Resampling.BILINEAR)
    assert (
        histogram_distance(kept.image, style_small)
        > histogram_distance(plain.image, style_small) + 3
    )
    assert mean_colour_shift(kept.image, content) < 0.5 * mean_colour_shift(plain.image, content)
    assert kept.image.tobytes() != plain.image.tobytes()


def test_histogram_error_is_zero_on_the_styles_own_features():
    net = weights.load_vgg19()
    with torch.no_grad():
        feats = net(imaging.to_tensor(make_style()), frozenset(HISTOGRAM_LAYERS))
        tables = {layer: quantile_table(feats[layer]) for layer in HISTOGRAM_LAYERS}
        own = histogram_error(feats, tables)
        other = net(imaging.to_tensor(make_content(72, 56)), frozenset(HISTOGRAM_LAYERS))
        assert float(own) < 1e-3 < float(histogram_error(other, tables))


def test_histogram_loss_is_off_by_default_and_pulls_towards_the_style_histogram():
    content, style = make_content(), make_style()
    off = run_style(content, [style], **FAST)
    on = run_style(content, [style], histogram_weight=20.0, **FAST)
    assert "histogram" not in off.metrics["losses"]
    assert on.metrics["losses"]["histogram"] > 0
    assert on.metrics["params"]["histogram_weight"] == 20.0
    style_small = style.resize(on.image.size, Image.Resampling.BILINEAR)
    assert histogram_distance(on.image, style_small) < histogram_distance(off.image, style_small)
