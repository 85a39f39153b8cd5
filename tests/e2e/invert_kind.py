"""A whole job kind in one module: ``invert`` writes the colour negative of an image.

Named in ATELIER_KIND_MODULES, it is imported by the web server, the worker and
``atelier submit`` alike: its spec gives the form, the API's parsing, the OpenAPI
schema and the CLI's options; the generic submit handler stores its upload; the runner
below is all the worker needs. tests/e2e/test_invert_kind.py runs it end to end; the
README's "Adding a job kind" walks through it.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageOps

from shared.kinds import FileField, KindSpec, Param, register
from shared.queue import CPU_QUEUE
from worker.kinds import RunContext, register_runner

SPEC = register(
    KindSpec(
        name="invert",
        title="Invert",
        queue=CPU_QUEUE,
        doc="The colour negative of an image.",
        files=(FileField("image", "the image to invert"),),
        params=(
            Param("keep_red", "bool", "leave the red channel as it is", default=False),
            Param(
                "output_format",
                "choice",
                "result file format",
                default="png",
                choices=("png", "webp"),
                engine=False,
            ),
        ),
        views=("image",),
    )
)


def run(ctx: RunContext) -> dict[str, Any]:
    """Decode, invert, store ``result.<format>`` and a thumbnail."""
    with Image.open(io.BytesIO(ctx.read(ctx.inputs["image"][0]))) as source:
        image = source.convert("RGB")
    ctx.mark_processing()
    inverted = ImageOps.invert(image)
    if ctx.engine_params()["keep_red"]:
        inverted = Image.merge("RGB", (image.getchannel("R"), *inverted.split()[1:]))
    ctx.report(current=1, total=1, stage="inverting", loss=None, force=True)
    fmt = ctx.params["output_format"]
    buffer = io.BytesIO()
    inverted.save(buffer, fmt.upper())
    ctx.store_output(f"result.{fmt}", buffer.getvalue(), f"image/{fmt}")
    ctx.save_thumbnail(inverted)
    return {"pixels": image.width * image.height}


register_runner(SPEC.name, run, out_of_memory_hint="send a smaller image")
