"""A job kind defined in one module, as a deployment defines its own: the spec and the
worker's runner (a web handler would go here too). tests/e2e/test_kind_modules.py
names it in ATELIER_KIND_MODULES of a real worker; the test process never imports it,
so its kind stays out of the other tests' registry.
"""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image

from shared.kinds import FileField, KindSpec, Param, register
from shared.queue import CPU_QUEUE
from worker.kinds import RunContext, register_runner

SPEC = register(
    KindSpec(
        name="measure",
        title="Measure",
        queue=CPU_QUEUE,
        doc="Report the size of an image, scaled.",
        files=(FileField("image", "the image to measure"),),
        params=(Param("scale", "int", "multiply the sides by", default=1, minimum=1, maximum=9),),
    )
)


def run(ctx: RunContext) -> dict[str, Any]:
    """The image's sides times ``scale``, as size.json and in the summary."""
    with Image.open(io.BytesIO(ctx.read(ctx.inputs["image"][0]))) as image:
        width, height = image.size
    ctx.mark_processing()
    ctx.report(current=1, total=1, stage="measuring", loss=None, force=True)
    scale = ctx.engine_params()["scale"]
    size = {"width": width * scale, "height": height * scale}
    ctx.store_output("size.json", json.dumps(size).encode(), "application/json")
    return size


register_runner("measure", run, out_of_memory_hint="measure a smaller image")
