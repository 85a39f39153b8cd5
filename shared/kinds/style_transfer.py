"""``style_transfer``: Gatys et al. optimisation of one content image towards style images.

Every field, bound, default and choice of the kind is here; see shared/kinds/spec.py
for what reads it. Defaults of None are resolved by the engine from ``preset`` and
``strength`` and recorded in ``metrics.json``.

Region masks: the optional ``mask`` image is painted in up to eight pure colours, the
corners of the RGB cube (:data:`MASK_COLOURS`); every pixel snaps to the nearest corner
(each channel split at 128), so anti-aliased edges and JPEG noise fall to one side and
there are never more than eight regions. ``mask_styles`` maps colours to a style index
or to ``keep``; its items are a fixed set of ``colour:target`` choices, so the form, the
OpenAPI pattern and the CLI all read them from this table, and :func:`check` refuses
what a choice list cannot say (a colour twice, an index past the styles, no mask).

Faces: ``protect_faces`` (on by default) and the optional ``protect`` image (bright =
protect) make the content loss weigh more where people look first; the engine's
worker/engines/faces.py says how much and how faces are found.
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
# The mask's palette: the eight corners of the RGB cube (a pixel snaps to the nearest).
MASK_COLOURS = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}
KEEP = "keep"  # a region that keeps the content: no style loss, content pixels composited
MASK_TARGETS = (*(str(i) for i in range(MAX_STYLES)), KEEP)
MASK_STYLE_CHOICES = tuple(f"{c}:{t}" for c in MASK_COLOURS for t in MASK_TARGETS)
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
        choices=("none", "luminance", "statistics", "histogram"),
        expert=True,
        label="Preserve colour",
    ),
    Param(
        "color_only",
        "bool",
        "transfer only the styles' colour histograms to the content, with no optimisation "
        "(well under a second; the optimisation fields are ignored)",
        default=False,
        expert=True,
        label="Colour only",
    ),
    Param(
        "protect_faces",
        "bool",
        "find faces in the content (OpenCV's Haar detector) and weigh the content loss more "
        "inside them, so faces stay recognisable; the boxes found are in metrics.json",
        default=True,
        label="Protect faces",
    ),
    Param(
        "histogram_weight",
        "float",
        "weight of the histogram loss (Risser et al. 2017) on relu1_1 and relu4_1: "
        "activation histograms matched to the style's, which steadies colours and contrast; "
        "0 is off",
        default=0.0,
        minimum=0.0,
        maximum=MAX_WEIGHT,
        expert=True,
    ),
    Param(
        "mask_styles",
        "choices",
        "with a mask: colour:style pairs, the style index counted from 0 or keep for "
        "content only; colours are black, white, red, green, blue, yellow, cyan, magenta "
        "and unlisted ones get the blend of every style; default: none, e.g. red:0,blue:keep",
        choices=MASK_STYLE_CHOICES,
        label="Mask regions",
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
    """Weight lists match what they weigh (style images and style layers); colour tools
    and the mask agree with each other (see :func:`check_colour` and :func:`check_mask`)."""
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
    check_colour(params)
    if counts.get("protect") and params.get("color_only"):
        raise InputError(
            "color_only does not optimise, so it takes no protect mask", field="protect"
        )
    if "mask" in counts:
        check_mask(params, counts.get("mask", 0), counts.get("style", 0))


def check_colour(params: Mapping[str, Any]) -> None:
    """color_only recolours the content towards the styles: keeping the content's colours
    at the same time asks for the opposite."""
    if params.get("color_only") and params.get("preserve_color", "none") != "none":
        raise InputError(
            "color_only transfers the styles' colours, so preserve_color must be none",
            field="color_only",
        )


def check_mask(params: Mapping[str, Any], masks: int, styles: int) -> None:
    """The mask and its mapping come together, each colour once, each index a style.

    A mask without ``mask_styles`` is refused naming ``mask``, ``mask_styles`` without a
    mask naming ``mask_styles``: the error sits by the field that came alone.

    Runs when the caller counts the mask upload (the submit always does, the worker with
    the mask in hand); an engine caller resolving params alone has no mask to check.
    """
    mapping = params.get("mask_styles")
    if masks and not mapping:  # each of the two, given without the other, is named
        raise InputError(
            "mask needs mask_styles: map each colour of the mask to a style index or keep, "
            "e.g. red:0,blue:keep",
            field="mask",
        )
    if not mapping:
        return
    if not masks:
        raise InputError("mask_styles needs a mask image: upload it as mask", field="mask_styles")
    seen: set[str] = set()
    for item in mapping:
        colour, _, target = item.partition(":")
        if colour in seen:
            raise InputError(f"mask_styles maps {colour} more than once", field="mask_styles")
        seen.add(colour)
        if target != KEEP and int(target) >= styles:
            raise InputError(
                f"mask_styles maps {colour} to style {target}, but there are {styles} style "
                f"image(s), indexed from 0",
                field="mask_styles",
            )
    if params.get("color_only"):
        raise InputError("color_only does not take a mask", field="color_only")
    if params.get("histogram_weight"):
        raise InputError(
            "histogram_weight applies to the whole image and does not take a mask",
            field="histogram_weight",
        )


SPEC = KindSpec(
    name="style_transfer",
    title="Style transfer",
    queue=GPU_QUEUE,
    doc="Repaint a photo in the style of one or more paintings.",
    files=(
        FileField("content", "the content image (the photo to repaint)"),
        FileField("style", "at least one style image", max_count=MAX_STYLES),
        FileField(
            "mask",
            "optional region mask in pure colours (see mask_styles), resized to the content",
            required=False,
        ),
        FileField(
            "protect",
            "optional protect mask: bright areas keep the content as a face does (the content "
            "loss weighs more there), resized to the content",
            required=False,
        ),
    ),
    params=PARAMS,
    views=("image",),
    check=check,
)
