"""Runs a ``style_transfer`` job: decode the images, stylize with progress, store results.

The parameters are the ones shared/kinds/style_transfer.py defines; the engine resolves
the rest (preset, weights from strength) and its ``metrics`` record every value it used,
which go into ``metrics.json`` as they are (with ``protect_faces``, the face boxes the
engine found, worker/engines/faces.py).  A ``color_only`` job takes the same path: the
engine recolours without loading a network and the outputs are stored as usual.

Resume: the engine's checkpoints (worker/engines/checkpoint.py) are stored at
``jobs/<id>/checkpoint-<attempt>.pt``, outside every attempt's prefix (a drained job's
prefix is deleted when it is handed back) and never a file row, so never a download.
Each attempt writes only its own, so a frozen attempt that wakes up overwrites nothing
its successor wrote; a new attempt continues from the newest one of an attempt up to
its own.  A drain saves one more at the step it stops at.  They are deleted when the job
ends here in any terminal state, and stay when it is handed back or taken over.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import InputError
from shared.images import load_rgb
from shared.states import Superseded
from worker.engines.errors import InvalidInput
from worker.kinds import KindRunner, RunContext
from worker.kinds.checkpoints import checkpoint_sink, delete_checkpoints, read_checkpoint
from worker.progress import Drained

if TYPE_CHECKING:
    from PIL import Image

    from worker.engines.params import StyleParams
    from worker.engines.style_transfer import StyleProgress, StyleResult

log = logging.getLogger(__name__)


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


@dataclass
class StyleInputs:
    """A job's decoded images and resolved engine params: what ``stylize`` takes, and
    what worker/batching.py compares to decide which jobs share a batch."""

    content: Image.Image
    styles: list[Image.Image]
    mask: Image.Image | None
    protect: Image.Image | None
    params: StyleParams


def load_inputs(ctx: RunContext) -> StyleInputs:
    """Decode the job's images and resolve its params (InvalidInput names a bad field)."""
    from worker.engines.params import StyleParams

    content = _image(ctx, "content", ctx.inputs["content"][0])
    styles = [_image(ctx, "style", name) for name in ctx.inputs.get("style", [])]
    mask_names = ctx.inputs.get("mask", [])
    mask = _image(ctx, "mask", mask_names[0]) if mask_names else None
    protect_names = ctx.inputs.get("protect", [])
    protect = _image(ctx, "protect", protect_names[0]) if protect_names else None
    params = StyleParams.resolve(
        len(styles), masks=len(mask_names), **ctx.engine_params(), device=ctx.settings.device
    )
    return StyleInputs(content, styles, mask, protect, params)


def progress_callback(ctx: RunContext) -> Callable[[StyleProgress], None]:
    """The engine's per-step callback: progress, previews, cancel and drain checks."""

    def on_progress(progress: StyleProgress) -> None:
        try:
            ctx.report(
                current=progress.step,
                total=progress.total,
                stage=f"scale {progress.scale}/{progress.scales}",
                loss=lambda: progress.loss,  # read (a GPU sync) only when a report is written
                image=progress.image,
            )
        except Drained:
            _save_before_hand_back(ctx, progress)
            raise

    return on_progress


def run(ctx: RunContext) -> dict[str, Any]:
    """Load the images, run the style engine with progress, store result + preview."""
    from worker.engines.style_transfer import stylize

    inputs = load_inputs(ctx)
    ctx.mark_processing()
    started = time.monotonic()
    try:
        result = stylize(
            inputs.content,
            inputs.styles,
            inputs.params,
            on_progress=progress_callback(ctx),
            mask=inputs.mask,
            protect=inputs.protect,
            checkpoint=read_checkpoint(ctx),
            on_checkpoint=checkpoint_sink(ctx),
            checkpoint_seconds=ctx.settings.checkpoint_seconds,
        )
    except (Drained, Superseded):
        raise  # the job goes on elsewhere: its checkpoints are what it continues from
    except Exception:
        # canceled or failed: the job ends here (a worker stopped at once raises no
        # Exception here, and its checkpoint stays for the claim after the requeue)
        delete_checkpoints(ctx)
        raise
    return store_result(ctx, result, started)


def store_result(ctx: RunContext, result: StyleResult, started: float) -> dict[str, Any]:
    """Store the image, ``metrics.json``, preview and thumbnail; returns the job's metrics
    (with ``batch_size`` when the job ran in a batch). ``started``: the engine's start
    on the monotonic clock."""
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
    delete_checkpoints(ctx)
    batch = {"batch_size": result.metrics["batch_size"]} if "batch_size" in result.metrics else {}
    return {
        "device": result.metrics.get("device"),
        "seed": result.seed,
        "losses": result.metrics.get("losses"),
        "checkpoints": result.metrics.get("checkpoints"),
        **batch,
    }


def _save_before_hand_back(ctx: RunContext, progress: StyleProgress) -> None:
    """The drain ran out: checkpoint this very step, so the next claim repeats none."""
    try:
        progress.save_checkpoint()
    except Exception:
        log.warning("job %s: no checkpoint at hand-back", ctx.job_id, exc_info=True)


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
