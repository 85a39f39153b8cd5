"""Gatys et al. losses, normalised so the same weights give the same look at any size.

Raw sums of squared feature differences grow with the number of pixels and differ by
orders of magnitude between layers, which is why classic implementations need per-size
weight tuning.  Here every term is a *relative* squared error:

* content: ‖F − Fc‖² / ‖Fc‖² at relu4_2,
* style:   mean over layers of ‖G − Gs‖² / ‖Gs‖², with G = F Fᵀ / (C·H·W),
* tv:      mean squared difference of neighbouring pixels (0–1 units).

These are the squares of the distances the benchmark judge reports, so the optimiser
works directly on the quantities people compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
ALL_LAYERS = frozenset((CONTENT_LAYER, *STYLE_LAYERS))


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix F Fᵀ / (C·H·W) of a (1, C, H, W) map, always in fp32.

    Computed in fp32 even under bf16 autocast: the sums run over H·W terms and lose the
    small differences the style loss is made of at bf16's 8-bit mantissa.
    """
    _, c, h, w = features.shape
    flat = features.reshape(c, h * w).float()
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return (flat @ flat.T) / (c * h * w)


@dataclass
class Targets:
    """Everything the loss compares against at one scale."""

    content: torch.Tensor
    content_norm: torch.Tensor
    grams: dict[str, torch.Tensor]
    gram_norms: dict[str, torch.Tensor]


def blend_grams(
    per_style: Sequence[dict[str, torch.Tensor]], blend: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted mix of several styles' Gram targets (weights already normalised).

    Mixing targets instead of summing per-style losses costs one loss per layer however
    many styles there are, and gives the same minimiser up to a constant.
    """
    return {
        layer: sum(w * grams[layer] for w, grams in zip(blend, per_style, strict=True))
        for layer in STYLE_LAYERS
    }


def make_targets(content_features: torch.Tensor, grams: dict[str, torch.Tensor]) -> Targets:
    content = content_features.detach().float()
    return Targets(
        content=content,
        content_norm=content.pow(2).sum().clamp_min(1e-12),
        grams=grams,
        gram_norms={k: g.pow(2).sum().clamp_min(1e-12) for k, g in grams.items()},
    )


@dataclass
class LossTerms:
    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.float().pow(2).mean() + dy.float().pow(2).mean()


def loss_terms(
    features: dict[str, torch.Tensor], image: torch.Tensor, targets: Targets
) -> LossTerms:
    """Unweighted relative content/style errors and TV of one forward pass."""
    content = (features[CONTENT_LAYER].float() - targets.content).pow(2).sum()
    content = content / targets.content_norm
    style = image.new_zeros((), dtype=torch.float32)
    for layer in STYLE_LAYERS:
        diff = gram(features[layer]) - targets.grams[layer]
        style = style + diff.pow(2).sum() / targets.gram_norms[layer]
    return LossTerms(content=content, style=style / len(STYLE_LAYERS), tv=tv_loss(image))
