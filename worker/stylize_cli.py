"""``atelier stylize``: run the style engine locally, no queue, with a progress bar.

Every option's default comes from ``worker.engines.params`` so the CLI, the web form and
the engine cannot drift apart.  ``python -m worker.stylize_cli`` runs it standalone
(benchmarks use that to time a whole job in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from worker.engines.params import (
    DEFAULTS,
    INITS,
    OPTIMIZERS,
    PRESERVE_COLORS,
    PRESETS,
)
from worker.engines.style_transfer import PRECISIONS, StyleProgress, stylize
from worker.engines.weights import POOLINGS, RELU_LAYERS, SOURCES
from worker.local_run import EXIT_INVALID_INPUT, ProgressBar, run_engine


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the stylize options to ``parser`` (shared by the subcommand and ``main``)."""
    d = DEFAULTS
    parser.add_argument("content", type=Path, help="content image")
    parser.add_argument("styles", type=Path, nargs="+", metavar="STYLE", help="style image(s)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="output image (format from the extension)"
    )
    parser.add_argument("--size", type=int, default=d.size, help="long side of the output, px")
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="total optimiser steps over all scales (default: from preset)",
    )
    parser.add_argument("--preset", choices=tuple(PRESETS), default=d.preset)
    parser.add_argument(
        "--strength",
        type=float,
        default=d.strength,
        help="0 = content, 1 = style; size-independent",
    )
    parser.add_argument(
        "--style-weights",
        type=_floats,
        default=None,
        metavar="W1,W2,...",
        help="blend weights, one per style (normalised)",
    )
    parser.add_argument("--content-weight", type=float, default=None, help="expert override")
    parser.add_argument("--style-weight", type=float, default=None, help="expert override")
    parser.add_argument("--tv-weight", type=float, default=None, help="expert override")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    parser.add_argument("--init", choices=INITS, default=d.init)
    parser.add_argument("--pooling", choices=POOLINGS, default=d.pooling)
    parser.add_argument("--preserve-color", choices=PRESERVE_COLORS, default=d.preserve_color)
    parser.add_argument("--style-scale", type=float, default=d.style_scale)
    parser.add_argument("--content-layer", choices=RELU_LAYERS, default=d.content_layer)
    parser.add_argument(
        "--style-layers",
        type=_names,
        default=d.style_layers,
        metavar="L1,L2,...",
        help=f"VGG19 layers of the style loss (default: {','.join(d.style_layers)})",
    )
    parser.add_argument(
        "--style-layer-weights",
        type=_floats,
        default=None,
        metavar="W1,W2,...",
        help="one weight per style layer (normalised; default equal)",
    )
    parser.add_argument(
        "--no-multiscale",
        dest="multiscale",
        action="store_false",
        default=d.multiscale,
        help="optimise at the output size only",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random, recorded")
    parser.add_argument("--weights", choices=SOURCES, default=d.weights)
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
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
    except (OSError, UnidentifiedImageError) as exc:
        print(f"error (invalid_input): cannot read image: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    result, code = run_engine(
        lambda: stylize(
            content,
            styles,
            size=args.size,
            iterations=args.iterations,
            preset=args.preset,
            strength=args.strength,
            style_weights=args.style_weights,
            content_weight=args.content_weight,
            style_weight=args.style_weight,
            tv_weight=args.tv_weight,
            optimizer=args.optimizer,
            init=args.init,
            pooling=args.pooling,
            preserve_color=args.preserve_color,
            style_scale=args.style_scale,
            content_layer=args.content_layer,
            style_layers=args.style_layers,
            style_layer_weights=args.style_layer_weights,
            multiscale=args.multiscale,
            seed=args.seed,
            weights=args.weights,
            device=args.device,
            precision=args.precision,
            callback=None if args.quiet else ProgressBar(_describe),
        )
    )
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
