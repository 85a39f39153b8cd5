"""Runs a ``fine_tune`` job: check the archive again, train with progress, store the model.

The archive is listed and checked again here (the worker trusts no file it did not
write); the engine resolves the strategy's defaults (shared/kinds/fine_tune.py) and
records them in ``metrics.json``. The trained network is then exported to model.onnx
and a TorchScript file (worker/engines/export.py) so it can leave the service, unless the
``export`` param asks for fewer; a format that fails is recorded in ``metrics["export"]``
and the job still succeeds with model.pt.

Resume: full and gradual runs checkpoint at the end of a network epoch (weights,
optimiser, step counter, best epoch, RNG states; worker/engines/checkpoint.py), at every
epoch that ends ``ATELIER_CHECKPOINT_SECONDS`` or more after the last one, stored and read
exactly as a style job's (shared/checkpoints.py: ``checkpoint-<attempt>.pt``
next to the job's attempt prefixes), so a job requeued after a lost worker, a fenced-off
attempt or a drain continues after its last whole epoch. A linear probe writes none.
The checkpoints stay while the job goes on elsewhere (Drained, Superseded), and are
deleted when it ends here: succeeded, failed or canceled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from shared.archives import SafeArchive, file_names
from shared.dataset_layout import DatasetLayout, plan_layout
from shared.errors import InputError
from shared.states import Superseded
from worker.engines.errors import InvalidInput
from worker.engines.finetune_report import model_card
from worker.kinds import KindRunner, RunContext, image_limits
from worker.kinds.checkpoints import checkpoint_sink, delete_checkpoints, read_checkpoint
from worker.progress import Drained

if TYPE_CHECKING:  # the engines (and torch) load only inside a job
    from worker.engines.datasets import ImageDataset
    from worker.engines.export import ExportResult
    from worker.engines.finetune import FinetuneResult
    from worker.engines.imaging import ImageLimits

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
    try:
        summary = _train_and_store(ctx)
    except (Drained, Superseded):
        raise  # the job goes on elsewhere: its checkpoints are what it continues from
    except Exception:
        delete_checkpoints(ctx)  # canceled or failed: the job ends here
        raise
    delete_checkpoints(ctx)
    return summary


def _train_and_store(ctx: RunContext) -> dict[str, Any]:
    """Train (from the job's newest checkpoint when there is one), export, store."""
    from worker.engines.finetune import FinetuneConfig, FinetuneProgress, fine_tune

    dataset, layout = load_dataset(ctx.read(ctx.inputs["dataset"][0]))
    dataset = replace(dataset, limits=image_limits(ctx.settings))
    config = FinetuneConfig.resolve(**ctx.engine_params(), device=ctx.settings.device)
    ctx.mark_processing()

    last: dict[str, Any] = {"current": 0, "total": 1, "detail": None}  # the latest report

    def on_progress(p: FinetuneProgress) -> None:
        detail = {
            "epoch": p.epoch,
            "epochs": p.epochs,
            "val_accuracy": p.val_accuracy,
            "best_accuracy": p.best_accuracy,
        }
        last.update(current=p.step, total=p.total, detail=detail)
        ctx.report(
            current=p.step,
            total=p.total,
            stage=p.stage,
            loss=p.loss,
            detail=detail,
            force=p.step == p.total,
        )

    result = fine_tune(
        dataset,
        config,
        on_progress=on_progress,
        checkpoint=read_checkpoint(ctx),
        on_checkpoint=checkpoint_sink(ctx),
        checkpoint_seconds=ctx.settings.checkpoint_seconds,
    )

    def on_export(fmt: str) -> None:  # the stage shows, and a cancel stops the export
        ctx.report(**last, stage=f"exporting {fmt}", loss=None, force=True)

    formats = export_formats(ctx.params.get("export") or "all")  # "all" before it existed
    made = model_outputs(result, dataset, formats, on_export, ignored_files=len(layout.ignored))
    for name, data in made.files.items():
        ctx.store_output(name, data, "application/octet-stream")
    metrics = made.metrics
    ctx.store_output("metrics.json", json.dumps(metrics, indent=2).encode(), "application/json")
    ctx.store_output("model_card.md", made.card.encode(), "text/markdown")
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
        "checkpoints": result.metrics.get("checkpoints"),
    }


@dataclass(frozen=True)
class ModelOutputs:
    """What a finished fine-tune leaves: model.pt and its exported copies (name → bytes),
    metrics.json's content and model_card.md's text."""

    files: dict[str, bytes]
    metrics: dict[str, Any]
    card: str


def model_outputs(
    result: FinetuneResult,
    dataset: ImageDataset,
    formats: tuple[str, ...],
    on_export: Callable[[str], None] | None = None,
    **metrics: Any,
) -> ModelOutputs:
    """Export ``result``'s network in ``formats`` and write its metrics and card; a job
    and ``atelier finetune`` both end here, so their files cannot differ. ``metrics`` are
    added to the engine's (before the export report)."""
    exported = export_model(result.checkpoint, dataset, dataset.limits, on_export, formats)
    merged = {**result.metrics, **metrics, "export": exported.report}
    card = model_card(config=asdict(result.config), metrics=merged)
    return ModelOutputs({MODEL_FILE: result.checkpoint, **exported.files}, merged, card)


def export_formats(choice: str) -> tuple[str, ...]:
    """The formats the ``export`` param asks for: all of them, one, or none."""
    from worker.engines.export import FORMATS

    if choice == "all":
        return FORMATS
    return () if choice == "none" else (choice,)


def export_model(
    checkpoint: bytes,
    dataset: ImageDataset,
    limits: ImageLimits,
    on_step: Callable[[str], None] | None = None,
    formats: tuple[str, ...] | None = None,
) -> ExportResult:
    """ONNX and TorchScript files of the checkpoint's network, with their parity.

    The network is rebuilt from model.pt, so what is exported is exactly what predict
    jobs load; parity is measured on crops of the dataset's own images (validation ones
    when the archive had them). A failure becomes the export report's entry; only what
    ``on_step`` raises (Canceled, Drained) goes through.
    """
    from worker.engines.export import FORMATS, SAMPLE_SIZE, ExportResult, export_all, sample_batch
    from worker.engines.finetune import load_model

    formats = FORMATS if formats is None else formats
    if not formats:  # export=none: nothing to build, and no format to report
        return ExportResult()
    try:
        model = load_model(checkpoint, device="cpu")
        crops = []
        for item in (dataset.val or []) + dataset.train:
            if len(crops) >= SAMPLE_SIZE:
                break
            try:
                crops.append(model.crop(item.data or b"", limits))
            except (ValueError, InvalidInput):  # unreadable: the next one will do
                continue
    except Exception as exc:  # noqa: BLE001 - the job keeps model.pt whatever happens here
        reason = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        return ExportResult(report={fmt: reason for fmt in formats})
    return export_all(model.model, sample_batch(crops, model.image_size), on_step, formats)


RUNNER = KindRunner(
    run,
    out_of_memory_hint="choose a smaller image_size or batch_size, or a smaller backbone",
    timeout_hint="choose fewer epochs, a smaller image_size or a smaller backbone",
)
