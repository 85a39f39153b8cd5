"""Full / gradual fine-tuning variants on one fixed test fold: held-out accuracy and time.

Usage: python benchmarks/finetune_strategies.py --data PATH/TO/hymenoptera/train
       [--variants full:1.0,full:0.5] [--epochs 3] [--image-size 224] [--seeds 0]

Each variant is ``strategy:lr_decay`` (``lr_decay`` 1 = one rate for the whole backbone,
below 1 = discriminative rates, shared/kinds/fine_tune.py). The test fold is the one
benchmarks/finetune.py fixes before any tuning: the ``--test-per-class`` images of each
class whose file names sort first; it chooses nothing. Every variant runs the engine
(``fine_tune``) on the rest with the same seed (its own seeded validation split picks the
best epoch), then the kept model predicts the test fold. Per-epoch validation records are
kept, so a variant that only differs late can be seen.

Results go to ``benchmarks/results/finetune_strategies.json`` (``--append`` adds a run,
say another seed, to the ones there); its ``summary`` pools every run per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.finetune import fixed_test_fold  # noqa: E402


def run_variant(pool: list, test: list, strategy: str, lr_decay: float, seed: int, args) -> dict:
    """One engine run of ``strategy`` with ``lr_decay``, scored on the fixed test fold."""
    import torch

    from worker.engines.datasets import ImageDataset, LabeledImage
    from worker.engines.finetune import FinetuneConfig, fine_tune, load_model

    classes = sorted({cls for cls, _ in pool})
    items = [LabeledImage(f"{c}/{p.name}", classes.index(c), p.read_bytes()) for c, p in pool]
    config = FinetuneConfig.resolve(
        strategy=strategy,
        lr_decay=lr_decay,
        epochs=args.epochs,
        image_size=args.image_size,
        seed=seed,
        device="cpu",
    )
    torch.manual_seed(seed)
    started = time.monotonic()
    result = fine_tune(ImageDataset(classes, items), config)
    wall = time.monotonic() - started
    model = load_model(result.checkpoint)
    top = model.predict([p.read_bytes() for _, p in test], top_k=1)
    correct = sum(t[0]["label"] == cls for t, (cls, _) in zip(top, test, strict=True))
    keys = ("epoch", "phase", "train_loss", "val_loss", "val_accuracy", "seconds")
    return {
        "strategy": strategy,
        "lr_decay": lr_decay,
        "seed": seed,
        "epochs": config.epochs,
        "image_size": config.image_size,
        "precision": config.precision,
        "heldout_correct": correct,
        "heldout_images": len(test),
        "heldout_accuracy": round(correct / len(test), 4),
        "job_val_accuracy": result.metrics["accuracy"],
        "best_epoch": result.metrics["best_epoch"],
        "network_epochs": [
            {k: e[k] for k in keys} for e in result.metrics["epochs"] if e["phase"] != "head"
        ],
        "seconds": round(wall, 1),
    }


def _command() -> str:
    """This run's command line: the data folder's machine path replaced by a placeholder,
    ``--out`` left out (the results land where this file says they go by default)."""
    argv, words = list(sys.argv[1:]), []
    for i, arg in enumerate(argv):
        if arg == "--out" or (i > 0 and argv[i - 1] == "--out"):
            continue
        words.append("<hymenoptera>/train" if i > 0 and argv[i - 1] == "--data" else arg)
    return " ".join(["python benchmarks/finetune_strategies.py", *words])


def main() -> int:
    from benchmarks.harness import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="<class>/<image> folder")
    parser.add_argument("--variants", default="full:1.0,full:0.5", help="strategy:lr_decay,…")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--test-per-class", type=int, default=15)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/finetune_strategies.json"
    )
    parser.add_argument(
        "--append", action="store_true", help="add this run to the runs already in --out"
    )
    args = parser.parse_args()
    pool, test = fixed_test_fold(args.data, args.test_per_class)
    load_at_start = os.getloadavg()
    runs = json.loads(args.out.read_text())["runs"] if args.append and args.out.exists() else []
    results: list[dict] = []
    report = {
        "data": args.data.name,
        "pool_images": len(pool),
        "test_rule": f"the {args.test_per_class} first file names per class, fixed before tuning",
        "machine": {**machine(), "platform": platform.platform()},
        "command": _command(),
        "results": results,
    }
    runs.append(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in args.variants.split(","):
            strategy, decay = variant.split(":")
            results.append(run_variant(pool, test, strategy, float(decay), seed, args))
            print(json.dumps(results[-1]), flush=True)
            # after every variant, so a run stopped early still records what it measured
            report["machine"]["load_average"] = [load_at_start, os.getloadavg()]
            write(args.out, runs)
    print(f"wrote {args.out}")
    return 0


def write(out: Path, runs: list[dict]) -> None:
    """The runs and, per strategy:lr_decay over all of them, held-out images right of
    those seen and the mean validation loss of the last network epoch."""
    summary: dict[str, dict] = {}
    for result in (r for run in runs for r in run["results"]):
        entry = summary.setdefault(
            f"{result['strategy']}:{result['lr_decay']}",
            {"heldout_correct": 0, "heldout_images": 0, "last_epoch_val_losses": []},
        )
        entry["heldout_correct"] += result["heldout_correct"]
        entry["heldout_images"] += result["heldout_images"]
        entry["last_epoch_val_losses"].append(result["network_epochs"][-1]["val_loss"])
    for entry in summary.values():
        losses = entry.pop("last_epoch_val_losses")
        entry["heldout_accuracy"] = round(entry["heldout_correct"] / entry["heldout_images"], 4)
        entry["mean_last_epoch_val_loss"] = round(sum(losses) / len(losses), 5)
        entry["runs"] = len(losses)
    report = {"benchmark": "finetune_strategies", "summary": summary, "runs": runs}
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
