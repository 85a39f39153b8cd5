"""Runs a ``predict`` job: top-k labels for each uploaded image with a fine-tune's model.

``model`` (a runner-only param) names a succeeded fine_tune job; its model.pt is found
through its file row, since the attempt that wrote it decides where it is stored.
``runtime=onnx`` runs the job's model.onnx with onnxruntime instead, on the crops that
model.pt's own ``crop`` makes (model.pt still gives the classes and the preprocessing),
so the two runtimes see the same pixels and must give the same labels.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from shared.db import session_scope
from shared.jobs import file_key
from shared.kinds.predict import RUNTIME_FILES
from shared.models import JobFile
from shared.settings import Settings
from shared.storage import Storage
from worker.engines.errors import InvalidInput
from worker.kinds import KindRunner, RunContext, image_limits
from worker.kinds.fine_tune import MODEL_FILE

if TYPE_CHECKING:  # the engines (and torch) load only inside a job
    from worker.engines.export import OnnxPredictor
    from worker.engines.finetune import FineTunedModel
    from worker.engines.imaging import ImageLimits

PREDICT_BATCH = 16


def model_key(settings: Settings, storage: Storage, model_id: str, name: str = MODEL_FILE) -> str:
    """Storage key of a fine-tune job's output ``name``, from its file row (the attempt
    that wrote it); InvalidInput when the row or the file is gone, naming ``model`` for
    model.pt and ``runtime`` for another runtime's file (the field to change)."""
    with session_scope(settings.database_url) as session:
        row = session.scalar(
            select(JobFile).where(JobFile.job_id == model_id, JobFile.name == name)
        )
        key = None if row is None else file_key(model_id, row)
    if key is None or not storage.exists(key):
        if name == MODEL_FILE:
            raise InvalidInput(
                f"fine_tune job {model_id} has no {MODEL_FILE} any more (deleted?); "
                "fine-tune again or pick another model",
                "model",
            )
        raise InvalidInput(
            f"fine_tune job {model_id} has no {name} (its export failed, was left out by "
            "its export param, or it predates exports); use runtime=torch",
            "runtime",
        )
    return key


def read_key(storage: Storage, key: str) -> bytes:
    with storage.open(key) as handle:
        return handle.read()


def run(ctx: RunContext) -> dict[str, Any]:
    """Top-k labels for each uploaded image with a fine-tune job's model.pt."""
    from worker.engines.finetune import load_model

    model_id = ctx.params["model"]
    runtime = ctx.params.get("runtime") or "torch"  # jobs queued before runtime existed
    model_file = model_key(ctx.settings, ctx.storage, model_id)
    runtime_file = None
    if runtime != "torch":
        runtime_file = model_key(ctx.settings, ctx.storage, model_id, RUNTIME_FILES[runtime])
    images = ctx.inputs.get("image", [])
    names = ctx.params.get("image_names") or images  # as uploaded, when the web kept them
    data = [ctx.read(name) for name in images]
    ctx.mark_processing()
    ctx.report(current=0, total=len(data), stage="loading model", loss=None, force=True)
    model: FineTunedModel | OnnxPredictor
    model = load_model(read_key(ctx.storage, model_file), device=ctx.settings.device)
    if runtime_file is not None:
        from worker.engines.export import OnnxPredictor, onnx_session

        session = onnx_session(read_key(ctx.storage, runtime_file))
        model = OnnxPredictor(session, model.classes, model.crop)
    predictions, limits, top_k = [], image_limits(ctx.settings), int(ctx.params["top_k"])
    for start in range(0, len(data), PREDICT_BATCH):
        end = start + PREDICT_BATCH
        chunk = list(zip(names[start:end], data[start:end], strict=True))
        predictions += predict_chunk(model, chunk, top_k, limits)
        ctx.report(current=len(predictions), total=len(data), stage="predicting", loss=None)
    unreadable = [p for p in predictions if "error" in p]
    if len(unreadable) == len(predictions):
        examples = "; ".join(f"{p['name']}: {p['error']}" for p in unreadable[:3])
        raise InvalidInput(
            f"none of the {len(data)} images could be read, e.g. {examples}", "image"
        )
    body = {
        "model": model_id,
        "runtime": runtime,
        "classes": model.classes,
        "predictions": predictions,
        "unreadable": len(unreadable),
    }
    ctx.store_output("predictions.json", json.dumps(body, indent=2).encode(), "application/json")
    return {
        "device": model.device,
        "runtime": runtime,
        "model": model_id,
        "images": len(data),
        "unreadable": len(unreadable),
    }


def predict_chunk(
    model: FineTunedModel | OnnxPredictor,
    chunk: list[tuple[str, bytes]],
    top_k: int,
    limits: ImageLimits,
) -> list[dict[str, Any]]:
    """Predictions for (name, bytes) pairs, in order; an unreadable image is listed, not fatal.

    The submit checked headers only, so a truncated or corrupt body is found here: that
    image gets ``"top": []`` and an ``"error"``, and the others are still labelled.
    """
    rows, crops = [], []
    for name, blob in chunk:
        try:
            crops.append(model.crop(blob, limits))
            rows.append({"name": name, "top": None})
        except ValueError as exc:
            rows.append({"name": name, "top": [], "error": f"cannot be read: {exc}"[:300]})
    tops = iter(model.predict_crops(crops, top_k=top_k) if crops else [])
    for row in rows:
        if row["top"] is None:
            row["top"] = next(tops)
    return rows


RUNNER = KindRunner(
    run,
    out_of_memory_hint="send fewer or smaller images per job",
    timeout_hint="send fewer images per job",
)
