"""``predict``'s extra submit behaviour: its model checked now, its file names recorded.

The model is checked at submit (same owner, kind ``fine_tune``, ``succeeded``,
``model.pt`` recorded, and ``model.onnx`` too when ``runtime=onnx``: a model trained
before exports existed, or whose export failed, has none) so a prediction that cannot
run is refused before a job exists.
Images go through the generic reader (headers only; the worker decodes up to 256 of them
and lists an unreadable one in ``predictions.json`` instead of failing the others). The
names the client gave the images are kept in ``image_names`` for ``predictions.json``.
"""

from __future__ import annotations

from shared.errors import InputError
from shared.jobs import get_job
from shared.kinds.predict import RUNTIME_FILES
from shared.states import SUCCEEDED
from web.kinds.base import Prepared, SubmitContext
from web.kinds.generic import parse_params, read_inputs

MODEL_FILE = "model.pt"


def display_name(filename: str | None, fallback: str) -> str:
    """The uploaded file's base name, trimmed, for predictions.json (never used as a path)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or fallback


def check_model(ctx: SubmitContext, model_id: str, runtime: str = "torch") -> None:
    """InputError unless ``model_id`` is this owner's succeeded fine-tune with a model.pt
    (and the file ``runtime`` loads; its absence names ``runtime``, the field to change)."""
    job = get_job(ctx.session, model_id, ctx.owner)
    if job is None or job.kind != "fine_tune":
        raise InputError(
            f"model: there is no fine_tune job {model_id}; pass the id of one of your "
            "succeeded fine_tune jobs",
            field="model",
        )
    if job.status != SUCCEEDED:
        raise InputError(
            f"model: fine_tune job {model_id} is {job.status}, not succeeded; wait for it to "
            "succeed or pick another",
            field="model",
            status=409,
            code="conflict",
        )
    names = {f.name for f in job.files}
    if MODEL_FILE not in names:
        raise InputError(f"model: job {model_id} has no {MODEL_FILE}", field="model")
    wanted = RUNTIME_FILES[runtime]
    if wanted not in names:
        raise InputError(
            f"runtime: fine_tune job {model_id} has no {wanted} (its export failed, was "
            "left out by its export param, or it predates exports; see its metrics.json); "
            "use runtime=torch",
            field="runtime",
        )


def prepare(ctx: SubmitContext) -> Prepared:
    params = parse_params(ctx)
    check_model(ctx, params["model"], params.get("runtime") or "torch")
    inputs = read_inputs(ctx, params)
    params["image_names"] = [
        display_name(u.filename, u.stored.name) for u in inputs if u.stored.role == "image"
    ]
    return Prepared(params, [(u.stored, u.data) for u in inputs])
