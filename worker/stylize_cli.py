"""``atelier stylize``: run the style engine locally, no queue, with a progress bar.

Its job options are built from the kind's spec (shared/kinds/style_transfer.py), the
table the web form and the API read, so the CLI, the server and the engine cannot drift
apart; the rest (device, precision, output paths) are about this machine.  ``python -m
worker.stylize_cli`` runs it standalone (benchmarks use that to time a whole job in a
fresh process).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from shared.kinds.style_transfer import SPEC
from worker.engines.style_transfer import (
    PRECISIONS,
    StyleParams,
    StyleProgress,
    StyleResult,
    stylize,
)
from worker.local_run import (
    EXIT_INVALID_INPUT,
    ProgressBar,
    add_spec_options,
    run_engine,
    spec_values,
)


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the stylize options to ``parser`` (shared by the subcommand and ``main``)."""
    parser.add_argument("content", type=Path, help="content image")
    parser.add_argument("styles", type=Path, nargs="+", metavar="STYLE", help="style image(s)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="output image (format from the extension)"
    )
    add_spec_options(parser, SPEC)
    mask_doc = next(f.doc for f in SPEC.files if f.name == "mask")
    parser.add_argument("--mask", type=Path, default=None, help=f"{mask_doc}; needs --mask-styles")
    protect_doc = next(f.doc for f in SPEC.files if f.name == "protect")
    parser.add_argument("--protect", type=Path, default=None, help=protect_doc)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto = bf16 autocast on CUDA, fp32 elsewhere",
    )
    parser.add_argument(
        "--metrics-json",
        type=Path,
        default=None,
        help="where to write metrics (default: OUTPUT with .json suffix)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``stylize`` on the ``atelier`` entry point's subparsers."""
    parser = subparsers.add_parser(
        "stylize",
        help="run style transfer locally (no queue)",
        description="Neural style transfer on this machine, with a progress bar.",
    )
    configure(parser)
    parser.set_defaults(func=run)


def _describe(p: StyleProgress) -> str:
    """The progress bar's text; reading ``p.loss`` syncs a GPU, so only redraws do."""
    return f"{p.step}/{p.total} scale {p.scale}/{p.scales} loss {p.loss:.4g} {p.elapsed:.1f}s"


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def run(args: argparse.Namespace) -> int:
    """Run the engine for parsed ``args``; returns a process exit code."""
    try:
        content = _open(args.content)
        styles = [_open(path) for path in args.styles]
        mask = None if args.mask is None else _open(args.mask)
        protect = None if args.protect is None else _open(args.protect)
    except (OSError, UnidentifiedImageError) as exc:
        print(f"error (invalid_input): cannot read image: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    overrides = spec_values(args, SPEC)

    def call() -> StyleResult:
        masks = 0 if mask is None else 1
        params = StyleParams.resolve(len(styles), masks=masks, device=args.device, **overrides)
        progress = None if args.quiet else ProgressBar(_describe)
        return stylize(
            content,
            styles,
            params,
            on_progress=progress,
            precision=args.precision,
            mask=mask,
            protect=protect,
        )

    result, code = run_engine(call)
    if result is None:
        return code
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(args.output)
    metrics_path = args.metrics_json or args.output.with_suffix(".json")
    metrics_path.write_text(json.dumps(result.metrics, indent=2) + "\n")
    if not args.quiet:
        print(
            f"wrote {args.output} and {metrics_path} (seed {result.seed}, "
            f"{result.metrics['seconds']:.1f}s)",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure(argparse.ArgumentParser(prog="stylize", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
