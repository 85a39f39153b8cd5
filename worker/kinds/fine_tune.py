"""Runs a ``fine_tune`` job: check the archive again, train with progress, store the model.

The archive is listed and checked again here (the worker trusts no file it did not
write); the engine resolves the strategy's defaults (shared/kinds/fine_tune.py) and
records them in ``metrics.json``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shared.archives import SafeArchive, file_names
from shared.dataset_layout import DatasetLayout, plan_layout
from shared.errors import InputError
from worker.engines.errors import InvalidInput
from worker.kinds import KindRunner, RunContext, image_limits

if TYPE_CHECKING:  # the engines (and torch) load only inside a job
    from worker.engines.datasets import ImageDataset

MODEL_FILE = "model.pt"


def load_dataset(data: bytes) -> tuple[ImageDataset, DatasetLayout]:
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


def run(ctx: RunContext) -> dict[str, Any]:
    """Train on the uploaded archive; store model.pt, metrics.json and model_card.md."""
    from worker.engines.finetune import FinetuneConfig, FinetuneProgress, fine_tune

    dataset, layout = load_dataset(ctx.read(ctx.inputs["dataset"][0]))
    dataset = replace(dataset, limits=image_limits(ctx.settings))
    config = FinetuneConfig.resolve(**ctx.engine_params(), device=ctx.settings.device)
    ctx.mark_processing()

    def on_progress(p: FinetuneProgress) -> None:
        detail = {
            "epoch": p.epoch,
            "epochs": p.epochs,
            "val_accuracy": p.val_accuracy,
            "best_accuracy": p.best_accuracy,
        }
        ctx.report(
            current=p.step,
            total=p.total,
            stage=p.stage,
            loss=p.loss,
            detail=detail,
            force=p.step == p.total,
        )

    result = fine_tune(dataset, config, on_progress=on_progress)
    metrics = {**result.metrics, "ignored_files": len(layout.ignored)}
    ctx.store_output(MODEL_FILE, result.checkpoint, "application/octet-stream")
    ctx.store_output("metrics.json", json.dumps(metrics, indent=2).encode(), "application/json")
    ctx.store_output("model_card.md", result.model_card.encode(), "text/markdown")
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


RUNNER = KindRunner(
    run,
    out_of_memory_hint="choose a smaller image_size or batch_size, or a smaller backbone",
    timeout_hint="choose fewer epochs, a smaller image_size or a smaller backbone",
)
