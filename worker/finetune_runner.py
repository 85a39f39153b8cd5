"""Runners for ``fine_tune`` and ``predict`` jobs, in the style of ``run_style_transfer``.

Each loads its inputs from storage (the archive is checked again: the worker trusts no
file it did not write), moves the job to ``processing``, runs the engine with a progress
callback that also honours cancels, and stores the outputs.
"""

from __future__ import annotations

import json
from typing import Any

from shared.archives import SafeArchive, file_names
from shared.dataset_layout import plan_layout
from shared.errors import InputError
from shared.settings import Settings
from shared.storage import Storage, job_key
from worker.engines.errors import InvalidInput
from worker.progress import ProgressReporter, mark_processing, record_outputs, store_output

ENGINE_PARAMS = (
    "backbone", "strategy", "epochs", "batch_size", "lr", "weight_decay", "image_size",
    "val_split", "augment", "label_smoothing", "schedule", "early_stopping", "seed",
)  # fmt: skip
MODEL_FILE = "model.pt"
PREDICT_BATCH = 16


def _read(storage: Storage, job_id: str, name: str) -> bytes:
    with storage.open(job_key(job_id, name)) as handle:
        return handle.read()


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
    job_id: str,
    params: dict[str, Any],
    inputs: list[tuple[str, str]],
    settings: Settings,
    storage: Storage,
) -> dict[str, Any]:
    """Train on the uploaded archive; store model.pt, metrics.json and model_card.md."""
    from worker.engines.finetune import FinetuneProgress, fine_tune

    archive_name = next(name for role, name in inputs if role == "dataset")
    dataset, layout = load_dataset(_read(storage, job_id, archive_name))
    mark_processing(settings, job_id)
    reporter = ProgressReporter(job_id, settings, storage)

    def on_progress(p: FinetuneProgress) -> None:
        detail = {"epoch": p.epoch, "epochs": p.epochs, "val_accuracy": p.val_accuracy,
                  "best_accuracy": p.best_accuracy}  # fmt: skip
        reporter.report(current=p.step, total=p.total, stage=p.stage, loss=p.loss,
                        detail=detail, force=p.step == p.total)  # fmt: skip

    engine_args = {k: params[k] for k in ENGINE_PARAMS if k in params}
    result = fine_tune(dataset, callback=on_progress, device=settings.device, **engine_args)
    metrics = {**result.metrics, "ignored_files": len(layout.ignored)}
    outputs = [
        store_output(storage, job_id, MODEL_FILE, result.checkpoint, "application/octet-stream"),
        store_output(storage, job_id, "metrics.json", json.dumps(metrics, indent=2).encode(),
               "application/json"),
        store_output(storage, job_id, "model_card.md", result.model_card.encode(), "text/markdown"),
    ]  # fmt: skip
    record_outputs(settings, job_id, outputs)
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
    job_id: str,
    params: dict[str, Any],
    inputs: list[tuple[str, str]],
    settings: Settings,
    storage: Storage,
) -> dict[str, Any]:
    """Top-k labels for each uploaded image with a fine-tune job's model.pt."""
    from worker.engines.finetune import load_model

    model_id = params["model"]
    if not storage.exists(job_key(model_id, MODEL_FILE)):
        raise InvalidInput(
            f"fine_tune job {model_id} has no {MODEL_FILE} any more (deleted?); "
            "fine-tune again or pick another model",
            "model",
        )
    images = [name for role, name in inputs if role == "image"]
    names = params.get("image_names") or images
    data = [_read(storage, job_id, name) for name in images]
    mark_processing(settings, job_id)
    reporter = ProgressReporter(job_id, settings, storage)
    reporter.report(current=0, total=len(data), stage="loading model", loss=None, force=True)
    model = load_model(_read(storage, model_id, MODEL_FILE), device=settings.device)
    predictions = []
    for start in range(0, len(data), PREDICT_BATCH):
        tops = model.predict(data[start : start + PREDICT_BATCH], top_k=int(params["top_k"]))
        chunk = names[start : start + PREDICT_BATCH]
        predictions += [{"name": n, "top": top} for n, top in zip(chunk, tops, strict=True)]
        reporter.report(current=len(predictions), total=len(data), stage="predicting", loss=None)
    body = {"model": model_id, "classes": model.classes, "predictions": predictions}
    outputs = [
        store_output(storage, job_id, "predictions.json", json.dumps(body, indent=2).encode(),
               "application/json")
    ]  # fmt: skip
    record_outputs(settings, job_id, outputs)
    return {"device": model.device, "model": model_id, "images": len(data)}
