"""Runners for ``fine_tune`` and ``predict`` jobs, in the style of ``run_style_transfer``.

Each loads its inputs from storage (the archive is checked again: the worker trusts no
file it did not write), moves the job to ``processing``, runs the engine with a progress
callback that also honours cancels, and stores the outputs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from shared.archives import SafeArchive, file_names
from shared.dataset_layout import plan_layout
from shared.db import session_scope
from shared.errors import InputError
from shared.jobs import file_key
from shared.models import JobFile
from shared.settings import Settings
from shared.states import Fence
from shared.storage import Storage, job_key
from worker.engines.errors import InvalidInput
from worker.progress import ProgressReporter, mark_processing, record_outputs, store_output

if TYPE_CHECKING:  # the engines (and torch) load only inside a job
    from worker.engines.finetune import FineTunedModel
    from worker.engines.imaging import ImageLimits

ENGINE_PARAMS = (
    "backbone", "strategy", "epochs", "batch_size", "lr", "weight_decay", "image_size",
    "val_split", "augment", "label_smoothing", "schedule", "early_stopping", "seed",
)  # fmt: skip
MODEL_FILE = "model.pt"
PREDICT_BATCH = 16


def _read(storage: Storage, job_id: str, name: str) -> bytes:
    """An input of the job (the web stores those at ``jobs/<id>/<name>``)."""
    return _read_key(storage, job_key(job_id, name))


def _read_key(storage: Storage, key: str) -> bytes:
    with storage.open(key) as handle:
        return handle.read()


def model_key(settings: Settings, storage: Storage, model_id: str) -> str:
    """Storage key of a fine-tune job's model.pt, from its file row (the attempt that
    wrote it); InvalidInput when the row or the file is gone."""
    with session_scope(settings.database_url) as session:
        row = session.scalar(
            select(JobFile).where(JobFile.job_id == model_id, JobFile.name == MODEL_FILE)
        )
        key = None if row is None else file_key(model_id, row)
    if key is None or not storage.exists(key):
        raise InvalidInput(
            f"fine_tune job {model_id} has no {MODEL_FILE} any more (deleted?); "
            "fine-tune again or pick another model",
            "model",
        )
    return key


def load_dataset(data: bytes):
    """The stored archive as an engine ImageDataset; bad archives raise InvalidInput."""
    from worker.engines.datasets import ImageDataset, LabeledImage

    try:
        archive = SafeArchive(data)
        layout = plan_layout(file_names(archive.members))
    except InputError as exc:
        raise InvalidInput(exc.message, "dataset") from None
    wanted = {path for path, _ in layout.train + (layout.val or [])}
    contents: dict[str, bytes | None] = dict(archive.read(wanted))

    def items(pairs: list[tuple[str, int]]) -> list[LabeledImage]:
        return [LabeledImage(path, label, contents.get(path)) for path, label in pairs]

    val = items(layout.val) if layout.val is not None else None
    return ImageDataset(layout.classes, items(layout.train), val), layout


def run_fine_tune(
    fence: Fence,
    params: dict[str, Any],
    inputs: list[tuple[str, str]],
    settings: Settings,
    storage: Storage,
) -> dict[str, Any]:
    """Train on the uploaded archive; store model.pt, metrics.json and model_card.md."""
    from worker.engines.finetune import FinetuneProgress, fine_tune

    job_id = fence.job_id
    archive_name = next(name for role, name in inputs if role == "dataset")
    dataset, layout = load_dataset(_read(storage, job_id, archive_name))
    dataset = replace(dataset, limits=image_limits(settings))
    mark_processing(settings, fence)
    reporter = ProgressReporter(fence, settings, storage)

    def on_progress(p: FinetuneProgress) -> None:
        detail = {"epoch": p.epoch, "epochs": p.epochs, "val_accuracy": p.val_accuracy,
                  "best_accuracy": p.best_accuracy}  # fmt: skip
        reporter.report(current=p.step, total=p.total, stage=p.stage, loss=p.loss,
                        detail=detail, force=p.step == p.total)  # fmt: skip

    engine_args = {k: params[k] for k in ENGINE_PARAMS if k in params}
    result = fine_tune(dataset, callback=on_progress, device=settings.device, **engine_args)
    metrics = {**result.metrics, "ignored_files": len(layout.ignored)}
    outputs = [
        store_output(storage, fence, MODEL_FILE, result.checkpoint, "application/octet-stream"),
        store_output(storage, fence, "metrics.json", json.dumps(metrics, indent=2).encode(),
               "application/json"),
        store_output(storage, fence, "model_card.md", result.model_card.encode(), "text/markdown"),
    ]  # fmt: skip
    record_outputs(settings, fence, outputs)
    return {
        "device": result.config.device,
        "accuracy": result.metrics["accuracy"],
        "best_epoch": result.metrics["best_epoch"],
        "backbone": result.config.backbone,
        "strategy": result.config.strategy,
        "classes": result.classes,
        "unreadable": result.metrics["dataset"]["unreadable"],
        "seed": result.config.seed,
        "engine_seconds": result.metrics["timings"]["seconds"],
    }


def run_predict(
    fence: Fence,
    params: dict[str, Any],
    inputs: list[tuple[str, str]],
    settings: Settings,
    storage: Storage,
) -> dict[str, Any]:
    """Top-k labels for each uploaded image with a fine-tune job's model.pt."""
    from worker.engines.finetune import load_model

    job_id, model_id = fence.job_id, params["model"]
    model_file = model_key(settings, storage, model_id)
    images = [name for role, name in inputs if role == "image"]
    names = params.get("image_names") or images
    data = [_read(storage, job_id, name) for name in images]
    mark_processing(settings, fence)
    reporter = ProgressReporter(fence, settings, storage)
    reporter.report(current=0, total=len(data), stage="loading model", loss=None, force=True)
    model = load_model(_read_key(storage, model_file), device=settings.device)
    predictions, limits = [], image_limits(settings)
    for start in range(0, len(data), PREDICT_BATCH):
        chunk = list(zip(names[start : start + PREDICT_BATCH], data[start : start + PREDICT_BATCH],
                         strict=True))  # fmt: skip
        predictions += predict_chunk(model, chunk, int(params["top_k"]), limits)
        reporter.report(current=len(predictions), total=len(data), stage="predicting", loss=None)
    unreadable = [p for p in predictions if "error" in p]
    if len(unreadable) == len(predictions):
        examples = "; ".join(f"{p['name']}: {p['error']}" for p in unreadable[:3])
        raise InvalidInput(f"none of the {len(data)} images could be read, e.g. {examples}",
                           "image")  # fmt: skip
    body = {"model": model_id, "classes": model.classes, "predictions": predictions,
            "unreadable": len(unreadable)}  # fmt: skip
    outputs = [
        store_output(storage, fence, "predictions.json", json.dumps(body, indent=2).encode(),
               "application/json")
    ]  # fmt: skip
    record_outputs(settings, fence, outputs)
    return {"device": model.device, "model": model_id, "images": len(data),
            "unreadable": len(unreadable)}  # fmt: skip


def image_limits(settings: Settings) -> ImageLimits:
    """The header bounds (ATELIER_MAX_PIXELS, ATELIER_MAX_ASPECT_RATIO) every decode checks."""
    from worker.engines.imaging import ImageLimits

    return ImageLimits(settings.max_pixels, settings.max_aspect_ratio)


def predict_chunk(
    model: FineTunedModel, chunk: list[tuple[str, bytes]], top_k: int, limits: ImageLimits
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
