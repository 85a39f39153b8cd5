"""Gatys et al. losses, normalised so the same weights give the same look at any size.

Raw sums of squared feature differences grow with the number of pixels and differ by
orders of magnitude between layers, which is why classic implementations need per-size
weight tuning.  Here every term is a *relative* squared error:

* content: ‖F − Fc‖² / ‖Fc‖² at relu4_2,
* style:   mean over layers of ‖G − Gs‖² / ‖Gs‖², with G = F Fᵀ / (C·H·W) (weighted
           when the caller chooses layer weights),
* tv:      mean squared difference of neighbouring pixels (0–1 units).

The style term is further divided by the *style gap*: the style error of the content
image itself (``Targets.style_gap``).  A photo of a city and Starry Night start far
apart, a portrait and a muted seascape less so; without this, one style weight gives a
painterly mess on one pair and a faint tint on another.  With it, the style weight says
how much of the gap to close, so one default looks alike across pairs.

These are the squares of the distances the benchmark judge reports, so the optimiser
works directly on the quantities people compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shared.kinds.style_transfer import CONTENT_LAYER, STYLE_LAYERS

ALL_LAYERS = frozenset((CONTENT_LAYER, *STYLE_LAYERS))


@dataclass(frozen=True)
class LayerChoice:
    """Which VGG layers the losses read, and each style layer's share (summing to 1)."""

    content: str = CONTENT_LAYER
    style: tuple[str, ...] = STYLE_LAYERS
    style_weights: tuple[float, ...] = tuple(1 / len(STYLE_LAYERS) for _ in STYLE_LAYERS)

    @property
    def all(self) -> frozenset[str]:
        return frozenset((self.content, *self.style))


DEFAULT_LAYERS = LayerChoice()


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
    style_gap: torch.Tensor  # style error of the content image itself (≥ a small floor)
    layers: LayerChoice = DEFAULT_LAYERS


def blend_grams(
    per_style: Sequence[dict[str, torch.Tensor]], blend: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted mix of several styles' Gram targets (weights already normalised).

    Mixing targets instead of summing per-style losses costs one loss per layer however
    many styles there are, and gives the same minimiser up to a constant.
    """
    return {
        layer: sum(w * grams[layer] for w, grams in zip(blend, per_style, strict=True))
        for layer in per_style[0]
    }


MIN_STYLE_GAP = 1e-3  # a style image that *is* the content: keep the weight finite


def make_targets(
    content_features: dict[str, torch.Tensor],
    grams: dict[str, torch.Tensor],
    layers: LayerChoice = DEFAULT_LAYERS,
) -> Targets:
    """Targets from the content image's features at every loss layer and the style Grams."""
    content = content_features[layers.content].detach().float()
    gram_norms = {k: g.pow(2).sum().clamp_min(1e-12) for k, g in grams.items()}
    gap = style_error(content_features, grams, gram_norms, layers)
    return Targets(
        content=content,
        content_norm=content.pow(2).sum().clamp_min(1e-12),
        grams=grams,
        gram_norms=gram_norms,
        style_gap=gap.clamp_min(MIN_STYLE_GAP),
        layers=layers,
    )


def style_error(
    features: dict[str, torch.Tensor],
    grams: dict[str, torch.Tensor],
    gram_norms: dict[str, torch.Tensor],
    layers: LayerChoice = DEFAULT_LAYERS,
) -> torch.Tensor:
    """Weighted mean over the style layers of ‖G − Gs‖² / ‖Gs‖²."""
    total = torch.zeros((), dtype=torch.float32, device=grams[layers.style[0]].device)
    for layer, weight in zip(layers.style, layers.style_weights, strict=True):
        diff = gram(features[layer]) - grams[layer]
        total = total + weight * (diff.pow(2).sum() / gram_norms[layer])
    return total


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
    """Unweighted relative content/style errors and TV of one forward pass.

    ``style`` is the plain relative error (what the metrics report); the optimised term
    divides it by ``targets.style_gap``.
    """
    content = (features[targets.layers.content].float() - targets.content).pow(2).sum()
    content = content / targets.content_norm
    style = style_error(features, targets.grams, targets.gram_norms, targets.layers)
    return LossTerms(content=content, style=style, tv=tv_loss(image))
