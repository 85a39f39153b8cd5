"""A job kind as a deployment would add one: named in ATELIER_KIND_MODULES, it registers
its spec and a submit handler when imported (tests/web/test_extra_kind.py loads it)."""

from __future__ import annotations

from shared.kinds import FileField, KindSpec, Param, register
from shared.queue import CPU_QUEUE
from web.kinds import Prepared, SubmitContext, parse_params, read_inputs, register_handler

SPEC = register(
    KindSpec(
        name="plugin_echo",
        title="Echo",
        queue=CPU_QUEUE,
        doc="Returns its image (a kind only the tests register).",
        files=(FileField("picture", "the image to echo"),),
        params=(Param("times", "int", "how often", default=1, minimum=1, maximum=3),),
    )
)


def prepare(ctx: SubmitContext) -> Prepared:
    """The generic steps, plus a value of the handler's own."""
    params = parse_params(ctx)
    inputs = read_inputs(ctx, params)
    params["handled_by"] = "plugin"
    return Prepared(params, [(u.stored, u.data) for u in inputs])


register_handler(SPEC.name, prepare)
