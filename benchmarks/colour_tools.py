"""What the colour tools change, on one content × style pair at one size.

Runs our engine in this process, on the same pair, size and seed, once per variant:

* ``default``: the balanced preset, nothing else;
* ``histogram_weight=W`` for each ``--histogram-weights`` (Risser et al.'s histogram loss
  on relu1_1 and relu4_1; off by default);
* ``preserve_color=statistics`` and ``preserve_color=histogram`` (the style recoloured to
  the content's mean and covariance, or to its whole histogram);
* ``color_only=true`` (no network: the content recoloured to the style's histogram).

Each is judged by style_vs_pastiche.py's independent judge (content and style distances,
lower is better) and by colour alone: the mean gap between the per-channel quantile
functions of the result and of the content or style (grey levels; each resized as the
judge resizes it, since downsampling a painting alone moves its histogram), and how far
the mean colour moved from the content's.  Engine seconds are timed after a warm-up run
has loaded VGG19; ``color_only`` is the median of five calls.  Writes
``results/colour_tools.json`` and ``results/colour_tools.png`` (content | style | one
column per variant).

    .venv/bin/python benchmarks/colour_tools.py --size 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from style_vs_pastiche import Judge, contact_sheet  # noqa: E402

from worker.engines.imaging import fit_long_side  # noqa: E402
from worker.engines.params import StyleParams  # noqa: E402
from worker.engines.style_transfer import stylize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"  # the team's benchmark images (not shipped)


def quantile_gap(a: Image.Image, b: Image.Image) -> float:
    """Mean gap between the per-channel quantile functions of two images, grey levels."""
    qs = np.linspace(0, 1, 101)
    x, y = np.asarray(a.convert("RGB"), float), np.asarray(b.convert("RGB"), float)
    gaps = [
        np.abs(np.quantile(x[..., c], qs) - np.quantile(y[..., c], qs)).mean() for c in range(3)
    ]
    return float(np.mean(gaps))


def mean_shift(a: Image.Image, b: Image.Image) -> float:
    """Largest per-channel difference of the mean colours, grey levels."""
    x = np.asarray(a.convert("RGB"), float).reshape(-1, 3).mean(0)
    y = np.asarray(b.convert("RGB"), float).reshape(-1, 3).mean(0)
    return float(np.abs(x - y).max())


def variants(weights: list[float]) -> list[tuple[str, dict[str, Any]]]:
    runs: list[tuple[str, dict[str, Any]]] = [("default", {})]
    runs += [(f"histogram_weight={w:g}", {"histogram_weight": w}) for w in weights]
    runs += [
        ("preserve_color=statistics", {"preserve_color": "statistics"}),
        ("preserve_color=histogram", {"preserve_color": "histogram"}),
        ("color_only", {"color_only": True}),
    ]
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--content", type=Path, default=DATA / "content" / "tubingen.jpg")
    parser.add_argument("--style", type=Path, default=DATA / "style" / "starry_night.jpg")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--histogram-weights", default="5,50")
    parser.add_argument("--out", type=Path, default=RESULTS / "colour_tools.json")
    args = parser.parse_args(argv)
    content = Image.open(args.content).convert("RGB")
    style = Image.open(args.style).convert("RGB")
    judge = Judge()
    stylize(content, [style], StyleParams.resolve(1, size=32, iterations=1, device="cpu"))
    weights = [float(w) for w in args.histogram_weights.split(",") if w]
    rows, labels, report = [content, style], ["content", "style"], []
    for label, extra in variants(weights):
        params = StyleParams.resolve(1, size=args.size, seed=args.seed, device="cpu", **extra)
        times = []
        for _ in range(5 if params.color_only else 1):
            started = time.perf_counter()
            result = stylize(content, [style], params)
            times.append(time.perf_counter() - started)
        seconds = sorted(times)[len(times) // 2]
        content_d, style_d = judge.distances(result.image, content, style)
        sized = content.resize(result.image.size, Image.Resampling.BILINEAR)
        long_side = max(result.image.size)
        style_sized = style.resize(fit_long_side(*style.size, long_side), Image.Resampling.BILINEAR)
        entry = {
            "variant": label,
            "seconds": round(seconds, 3),
            "content_distance": round(content_d, 4),
            "style_distance": round(style_d, 4),
            "colour_gap_to_content": round(quantile_gap(result.image, sized), 2),
            "colour_gap_to_style": round(quantile_gap(result.image, style_sized), 2),
            "mean_colour_shift": round(mean_shift(result.image, sized), 2),
            "losses": result.metrics["losses"],
        }
        report.append(entry)
        rows.append(result.image)
        labels.append(label.replace("preserve_color=", "preserve ").replace("_weight", ""))
        print(json.dumps(entry), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    long_side = max(rows[2].size)
    style_sized = style.resize(fit_long_side(*style.size, long_side), Image.Resampling.BILINEAR)
    content_sized = content.resize(rows[2].size, Image.Resampling.BILINEAR)
    summary = {
        "pair": f"{args.content.name} x {args.style.name}",
        "content_colour_gap_to_style": round(quantile_gap(content_sized, style_sized), 2),
        "size": args.size,
        "seed": args.seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runs": report,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    contact_sheet([rows], labels, height=128).save(args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
