"""``style_transfer``: Gatys et al. optimisation of one content image towards style images.

Every field, bound, default and choice of the kind is here; see shared/kinds/spec.py
for what reads it. Defaults of None are resolved by the engine from ``preset`` and
``strength`` and recorded in ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.errors import InputError
from shared.kinds.spec import FileField, KindSpec, Param
from shared.queue import GPU_QUEUE

# VGG19's ReLU layers a loss may read (the engine's weights.RELU_LAYERS; a test keeps the
# two equal, since this package imports no torch).
VGG_LAYERS = tuple(
    f"relu{block}_{i}"
    for block, count in ((1, 2), (2, 2), (3, 4), (4, 4))
    for i in range(1, count + 1)
) + ("relu5_1",)
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PRESETS = ("fast", "balanced", "quality")
MAX_STYLES = 8
MAX_WEIGHT = 1e9
SEED_MAX = 2**32 - 1

PARAMS = (
    Param(
        "size",
        "int",
        "long side of the output",
        default=512,
        minimum=32,
        maximum=4096,
        unit="px",
        limit="max_size",
        label="Size (long side, px)",
    ),
    Param(
        "preset",
        "choice",
        "speed/quality preset: how many steps, spread over the scales",
        default="balanced",
        choices=PRESETS,
    ),
    Param(
        "strength",
        "float",
        "style against content: 0 keeps the content, 1 is all style",
        default=0.5,
        minimum=0.0,
        maximum=1.0,
    ),
    Param(
        "iterations",
        "int",
        "total optimiser steps over all scales; default: the preset's",
        minimum=1,
        maximum=10_000,
        limit="max_iterations",
        expert=True,
    ),
    Param("seed", "int", "random seed", minimum=0, maximum=SEED_MAX, random=True, expert=True),
    Param(
        "optimizer", "choice", "optimiser", default="lbfgs", choices=("lbfgs", "adam"), expert=True
    ),
    Param(
        "init",
        "choice",
        "starting image",
        default="content",
        choices=("content", "noise", "gray"),
        expert=True,
        label="Start from",
    ),
    Param("pooling", "choice", "VGG19 pooling", default="max", choices=("max", "avg"), expert=True),
    Param(
        "preserve_color",
        "choice",
        "keep the content's colours",
        default="none",
        choices=("none", "luminance", "statistics"),
        expert=True,
        label="Preserve colour",
    ),
    Param(
        "style_scale",
        "float",
        "style image size relative to the output",
        default=1.0,
        minimum=0.1,
        maximum=4.0,
        expert=True,
    ),
    Param(
        "multiscale",
        "bool",
        "coarse-to-fine over a scale pyramid",
        default=True,
        expert=True,
        label="Coarse-to-fine",
    ),
    Param(
        "output_format",
        "choice",
        "result file format",
        default="png",
        choices=("png", "jpeg", "webp"),
        expert=True,
        engine=False,
    ),
    Param(
        "weights",
        "choice",
        "VGG19 weights",
        default="original",
        choices=("original", "torchvision"),
        expert=True,
        label="VGG19 weights",
    ),
    Param(
        "style_weights",
        "floats",
        "blend of the style images, one weight per style image; default: equal",
        minimum=0.0,
        maximum=1e6,
        expert=True,
        label="Style blend weights",
    ),
    Param(
        "content_weight",
        "float",
        "expert override of the content loss weight; default: from strength",
        minimum=0.0,
        maximum=MAX_WEIGHT,
        expert=True,
    ),
    Param(
        "style_weight",
        "float",
        "expert override of the style loss weight; default: from strength",
        minimum=0.0,
        maximum=MAX_WEIGHT,
        expert=True,
    ),
    Param(
        "tv_weight",
        "float",
        "expert override of the total-variation weight; default: from strength",
        minimum=0.0,
        maximum=MAX_WEIGHT,
        expert=True,
        label="TV weight",
    ),
    Param(
        "content_layer",
        "choice",
        "VGG19 layer the content loss reads",
        default=CONTENT_LAYER,
        choices=VGG_LAYERS,
        expert=True,
    ),
    Param(
        "style_layers",
        "choices",
        "VGG19 layers the style loss reads",
        default=STYLE_LAYERS,
        choices=VGG_LAYERS,
        expert=True,
    ),
    Param(
        "style_layer_weights",
        "floats",
        "one weight per style layer; default: equal",
        minimum=0.0,
        maximum=1e6,
        expert=True,
    ),
)


def check(params: dict[str, Any], counts: Mapping[str, int]) -> None:
    """Weight lists match what they weigh: style images and style layers."""
    weights = params.get("style_weights")
    styles = counts.get("style", 0)
    if weights is not None and len(weights) != styles:
        raise InputError(
            f"style_weights has {len(weights)} values for {styles} style images",
            field="style_weights",
        )
    layer_weights = params.get("style_layer_weights")
    layers = params.get("style_layers") or STYLE_LAYERS
    if layer_weights is not None and len(layer_weights) != len(layers):
        raise InputError(
            f"style_layer_weights has {len(layer_weights)} values for {len(layers)} style "
            "layers: give one weight per layer in style_layers",
            field="style_layer_weights",
        )


SPEC = KindSpec(
    name="style_transfer",
    title="Style transfer",
    queue=GPU_QUEUE,
    doc="Repaint a photo in the style of one or more paintings.",
    files=(
        FileField("content", "the content image (the photo to repaint)"),
        FileField("style", "at least one style image", max_count=MAX_STYLES),
    ),
    params=PARAMS,
    views=("image",),
    check=check,
)
