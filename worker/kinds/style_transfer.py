"""Runs a ``style_transfer`` job: decode the images, stylize with progress, store results.

The parameters are the ones shared/kinds/style_transfer.py defines; the engine resolves
the rest (preset, weights from strength) and its ``metrics`` record every value it used,
which go into ``metrics.json`` as they are.  A ``color_only`` job takes the same path:
the engine recolours without loading a network and the outputs are stored as usual.
"""

from __future__ import annotations

import io
import json
import time
from typing import TYPE_CHECKING, Any

from shared.errors import InputError
from shared.images import load_rgb
from worker.engines.errors import InvalidInput
from worker.kinds import KindRunner, RunContext

if TYPE_CHECKING:
    from PIL import Image

# output_format (a runner-only param) -> PIL format, content type
OUTPUT_TYPES = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}


def _image(ctx: RunContext, role: str, name: str) -> Image.Image:
    """The full decode (the submit read only the header): bounds, then pixels."""
    try:
        return load_rgb(
            ctx.read(name),
            field=role,
            max_pixels=ctx.settings.max_pixels,
            max_aspect_ratio=ctx.settings.max_aspect_ratio,
        )
    except InputError as exc:
        raise InvalidInput(exc.message, role) from None


def run(ctx: RunContext) -> dict[str, Any]:
    """Load the images, run the style engine with progress, store result + preview."""
    from worker.engines.params import StyleParams
    from worker.engines.style_transfer import StyleProgress, stylize

    content = _image(ctx, "content", ctx.inputs["content"][0])
    styles = [_image(ctx, "style", name) for name in ctx.inputs.get("style", [])]
    mask_names = ctx.inputs.get("mask", [])
    mask = _image(ctx, "mask", mask_names[0]) if mask_names else None
    params = StyleParams.resolve(
        len(styles), masks=len(mask_names), **ctx.engine_params(), device=ctx.settings.device
    )
    ctx.mark_processing()

    def on_progress(progress: StyleProgress) -> None:
        ctx.report(
            current=progress.step,
            total=progress.total,
            stage=f"scale {progress.scale}/{progress.scales}",
            loss=lambda: progress.loss,  # read (a GPU sync) only when a report is written
            image=progress.image,
        )

    started = time.monotonic()
    result = stylize(content, styles, params, on_progress=on_progress, mask=mask)
    fmt, content_type = OUTPUT_TYPES[ctx.params.get("output_format", "png")]
    buffer = io.BytesIO()
    result.image.save(buffer, fmt)
    extension = "jpg" if fmt == "JPEG" else fmt.lower()
    engine_metrics = {
        **result.metrics,
        "seed": result.seed,
        "engine_seconds": round(time.monotonic() - started, 3),
    }
    ctx.store_output(f"result.{extension}", buffer.getvalue(), content_type)
    metrics_json = json.dumps(engine_metrics, indent=2, default=str).encode()
    ctx.store_output("metrics.json", metrics_json, "application/json")
    ctx.save_preview(result.image)
    ctx.save_thumbnail(result.image)
    return {
        "device": result.metrics.get("device"),
        "seed": result.seed,
        "losses": result.metrics.get("losses"),
    }


def preload() -> None:
    """Warm the default network (VGG19, original weights, max pooling) in a fresh child."""
    import torch

    from shared.settings import get_settings
    from worker.engines.weights import load_vgg19, weights_identity

    device = get_settings().device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    load_vgg19("original", "max", device)
    weights_identity("original")


RUNNER = KindRunner(
    run,
    out_of_memory_hint="choose a smaller size, fewer style images or a smaller style_scale",
    timeout_hint="lower size or iterations",
    preload=preload,
)
