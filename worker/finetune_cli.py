"""``atelier finetune``: fine-tune locally on a folder or archive, no queue, with a progress bar.

DATA is a directory or a .zip/.tar/.tar.gz of ``<class>/<image>`` folders (optionally
``train/`` and ``val/``), read by the same rules as an uploaded dataset. Outputs go to
``--output`` (model.pt, metrics.json, model_card.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.archives import is_junk
from shared.dataset_layout import plan_layout
from shared.errors import InputError
from shared.params_finetune import BACKBONES, SCHEDULES, STRATEGIES
from worker.engines.errors import InvalidInput
from worker.finetune_runner import load_dataset
from worker.local_run import EXIT_INVALID_INPUT, ProgressBar, run_engine


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options mirror the API's fine_tune fields; unset ones take the engine's defaults."""
    parser.add_argument("data", type=Path, help="dataset folder or .zip/.tar/.tar.gz")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("finetune-out"),
        help="folder for model.pt, metrics.json, model_card.md",
    )
    parser.add_argument("--backbone", choices=BACKBONES, default="vgg19")
    parser.add_argument("--strategy", choices=STRATEGIES, default="linear_probe")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--val-split", type=float, default=0.2)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    parser.add_argument("--early-stopping", type=int, help="patience in epochs, 0 = off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser  # fmt: skip


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``finetune`` on the ``atelier`` entry point's subparsers."""
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a classifier locally (no queue)",
        description="Transfer learning on an image-folder dataset, with a progress bar.",
    )  # fmt: skip
    configure(parser)
    parser.set_defaults(func=run)


def _describe(p) -> str:
    """The progress bar's text: stage, epoch, validation accuracy so far, time."""
    acc = f" val {p.val_accuracy:.3f}" if p.val_accuracy is not None else ""
    epoch = f" epoch {p.epoch}/{p.epochs}" if p.epoch else ""
    return f"{p.stage}{epoch}{acc} {p.elapsed:.1f}s"


def _folder_dataset(root: Path):
    """A directory read like an archive: regular files only, symlinks skipped."""
    from worker.engines.datasets import ImageDataset, LabeledImage

    names = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not is_junk(p.relative_to(root).as_posix())
    )
    layout = plan_layout(names)

    def items(pairs):
        return [LabeledImage(path, label, (root / path).read_bytes()) for path, label in pairs]

    val = items(layout.val) if layout.val is not None else None
    return ImageDataset(layout.classes, items(layout.train), val)


def _dataset(path: Path):
    try:
        if path.is_dir():
            return _folder_dataset(path)
        return load_dataset(path.read_bytes())[0]
    except InputError as exc:
        raise InvalidInput(exc.message, "dataset") from None


def run(args: argparse.Namespace) -> int:
    """Run the engine for parsed ``args``; returns a process exit code."""
    from worker.engines.finetune import fine_tune

    if not args.data.exists():
        print(f"error (invalid_input): {args.data} does not exist", file=sys.stderr)
        return EXIT_INVALID_INPUT
    params = {
        "backbone": args.backbone, "strategy": args.strategy, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "image_size": args.image_size, "val_split": args.val_split, "augment": args.augment,
        "label_smoothing": args.label_smoothing, "schedule": args.schedule,
        "early_stopping": args.early_stopping, "seed": args.seed, "device": args.device,
        "precision": args.precision,
    }  # fmt: skip
    callback = None if args.quiet else ProgressBar(_describe)
    result, code = run_engine(lambda: fine_tune(_dataset(args.data), callback=callback, **params))
    if result is None:
        return code
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "model.pt").write_bytes(result.checkpoint)
    (args.output / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    (args.output / "model_card.md").write_text(result.model_card)
    if not args.quiet:
        print(
            f"accuracy {result.metrics['accuracy']:.4f} (epoch {result.metrics['best_epoch']})"
            f"; wrote {args.output}/model.pt, metrics.json, model_card.md",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure(argparse.ArgumentParser(prog="finetune", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
