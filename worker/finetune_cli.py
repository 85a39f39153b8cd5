"""``atelier finetune``: fine-tune locally on a folder or archive, no queue, with a progress bar.

DATA is a directory or a .zip/.tar/.tar.gz of ``<class>/<image>`` folders (optionally
``train/`` and ``val/``), read by the same rules as an uploaded dataset. Outputs go to
``--output``: model.pt, the exported copies ``--export`` asks for (model.onnx and
model.torchscript.pt by default, as a job makes), metrics.json and model_card.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shared.archives import is_junk
from shared.dataset_layout import plan_layout
from shared.errors import InputError
from shared.kinds.fine_tune import SPEC
from worker.engines.errors import InvalidInput
from worker.local_run import (
    EXIT_INVALID_INPUT,
    ProgressBar,
    add_spec_options,
    run_engine,
    spec_values,
)

if TYPE_CHECKING:  # the engines (and torch) load only when a run starts
    from worker.engines.datasets import ImageDataset
    from worker.engines.finetune import FinetuneProgress
    from worker.kinds.fine_tune import ModelOutputs

PRECISIONS = ("auto", "fp32", "bf16")  # the engine's; torch-free here, a test keeps them equal
# Job params that are not the engine's but that a local run honours as a job does.
LOCAL_PARAMS = ("export",)


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The fine_tune kind's options (from its spec) plus where and how to run here.

    Options without a fixed default take the strategy's, which the engine resolves and
    records in metrics.json.
    """
    parser.add_argument("data", type=Path, help="dataset folder or .zip/.tar/.tar.gz")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("finetune-out"),
        help="folder for model.pt, its exported copies, metrics.json, model_card.md",
    )
    add_spec_options(parser, SPEC, local=LOCAL_PARAMS)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``finetune`` on the ``atelier`` entry point's subparsers."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a classifier locally (no queue)",
        description="Transfer learning on an image-folder dataset, with a progress bar.",
    )
    configure(parser)
    parser.set_defaults(func=run)


def _describe(p: FinetuneProgress) -> str:
    """The progress bar's text: stage, epoch, validation accuracy so far, time."""
    acc = f" val {p.val_accuracy:.3f}" if p.val_accuracy is not None else ""
    epoch = f" epoch {p.epoch}/{p.epochs}" if p.epoch else ""
    return f"{p.stage}{epoch}{acc} {p.elapsed:.1f}s"


def _folder_dataset(root: Path) -> ImageDataset:
    """A directory read like an archive: regular files only, symlinks skipped."""
    from worker.engines.datasets import ImageDataset, LabeledImage

    names = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not is_junk(p.relative_to(root).as_posix())
    )
    layout = plan_layout(names)

    def items(pairs: list[tuple[str, int]]) -> list[LabeledImage]:
        return [LabeledImage(path, label, (root / path).read_bytes()) for path, label in pairs]

    val = items(layout.val) if layout.val is not None else None
    return ImageDataset(layout.classes, items(layout.train), val)


def _dataset(path: Path) -> ImageDataset:
    """A folder or an archive, read by the rules of an uploaded dataset."""
    from worker.kinds.fine_tune import load_dataset

    try:
        if path.is_dir():
            return _folder_dataset(path)
        return load_dataset(path.read_bytes())[0]
    except InputError as exc:
        raise InvalidInput(exc.message, "dataset") from None


def run(args: argparse.Namespace) -> int:
    """Run the engine for parsed ``args``; returns a process exit code."""
    from worker.engines.finetune import FinetuneConfig, fine_tune

    if not args.data.exists():
        print(f"error (invalid_input): {args.data} does not exist", file=sys.stderr)
        return EXIT_INVALID_INPUT
    overrides = spec_values(args, SPEC)

    def call() -> ModelOutputs:
        from worker.kinds.fine_tune import export_formats, model_outputs

        config = FinetuneConfig.resolve(**overrides, device=args.device, precision=args.precision)
        progress = None if args.quiet else ProgressBar(_describe)
        dataset = _dataset(args.data)
        result = fine_tune(dataset, config, on_progress=progress)
        return model_outputs(result, dataset, export_formats(args.export))

    made, code = run_engine(call)
    if made is None:
        return code
    args.output.mkdir(parents=True, exist_ok=True)
    for name, data in made.files.items():
        (args.output / name).write_bytes(data)
    (args.output / "metrics.json").write_text(json.dumps(made.metrics, indent=2) + "\n")
    (args.output / "model_card.md").write_text(made.card)
    if not args.quiet:
        print(
            f"accuracy {made.metrics['accuracy']:.4f} (epoch {made.metrics['best_epoch']})"
            f"; wrote {args.output}/: {', '.join([*made.files, 'metrics.json', 'model_card.md'])}",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure(argparse.ArgumentParser(prog="finetune", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
