"""Linear-probe ablation, third round: what the shipped head is fitted on, and mirror views.

Usage: python benchmarks/finetune_ablation.py --data PATH/TO/hymenoptera/train
       [--variants a,b] [--features FILE]

Every image's default-backbone features are computed twice (the centre crop and its
mirror), once (``--features`` keeps them in a file for reruns). Each variant then does,
per job, what a job would do on those features: the seeded ``val_split`` split of its
dataset, λ by cross-validation, a head. Jobs: 5 seeds on the pool (everything but the
fixed test fold of benchmarks/finetune.py), and repeated stratified 5-fold × 3 on the
pool (each fold's training part is a job's dataset). Decisions are taken on the k-fold
numbers; the fixed fold is reported, never chosen on. Each variant is scored as trained
and with test-time flips (the logits of an image and its mirror averaged; for a linear
head that is the head of the averaged features).

Variants:

* ``train_only``: the previous default: the head fitted on the training part only.
* ``refit_same_l2``: the new default (the engine's ``_probe_head``): refitted on train +
  val with the λ the training part's CV chose.
* ``refit_cv_all``: refitted on train + val, λ chosen again by CV on all of them.
* ``augment``: ``augment=true`` as the engine runs it (the refit default, mirrored copies
  as extra training rows; an image and its mirror may fall in different CV folds).
* ``augment_grouped_cv``: the same with an image and its mirror always in one fold.
* ``mirror_averaged``: each image's features averaged with its mirror's, for training
  and at test time.

The result goes under ``third_round`` in benchmarks/results/finetune_ablation.json (the
file's other keys are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.finetune import (  # noqa: E402 - after the path
    _features,
    _job_split,
    _summary,
    fixed_test_fold,
)

VARIANTS = (
    "train_only",
    "refit_same_l2",
    "refit_cv_all",
    "augment",
    "augment_grouped_cv",
    "mirror_averaged",
)
REPEATS, FOLDS, SEEDS = 3, 5, 5


def load_features(data: Path, test_per_class: int, cache: Path | None) -> dict:
    """Plain and mirrored features of pool + test (benchmark order), from ``cache`` if any."""
    import torch

    from worker.engines.finetune import FinetuneConfig

    if cache is not None and cache.exists():
        return torch.load(cache)
    config = FinetuneConfig.resolve(seed=0)
    pool, test = fixed_test_fold(data, test_per_class)
    started = time.monotonic()
    plain, labels = _features(pool + test, config)
    mirrored, _ = _features(pool + test, config, flip=True)
    out = {
        "plain": plain,
        "flip": mirrored,
        "labels": labels,
        "names": [f"{c}/{p.name}" for c, p in pool + test],
        "n_pool": len(pool),
        "precision": config.precision,
        "feature_seconds": round(time.monotonic() - started, 1),
    }
    if cache is not None:
        torch.save(out, cache)
    return out


class Jobs:
    """One variant's shipped head for a job's dataset (indices into the cached features)."""

    def __init__(self, feats: dict) -> None:
        from worker.engines.finetune import FinetuneConfig

        self.f = feats
        self.config = FinetuneConfig.resolve(seed=0)
        self.avg = (feats["plain"] + feats["flip"]) / 2

    def rows(self, idx: list[int], views: str):
        import torch

        t, y = torch.tensor(idx, dtype=torch.long), self.f["labels"]
        if views == "both":
            return torch.cat([self.f["plain"][t], self.f["flip"][t]]), torch.cat([y[t], y[t]])
        return (self.avg if views == "avg" else self.f["plain"])[t], y[t]

    def cv(self, idx: list[int], views: str, seed: int, grouped: bool = False) -> float:
        from worker.engines import probe

        if not grouped:
            x, y = self.rows(idx, views)
            return probe.choose_l2(x, y, 2, seed, self.config.epochs).l2
        return self._grouped_cv(idx, seed)

    def _grouped_cv(self, idx: list[int], seed: int) -> float:
        """λ by CV where an image and its mirror are always held out together."""
        import torch
        from torch.nn import functional as F

        from worker.engines import probe

        labels = self.f["labels"][idx]
        folds = probe.stratified_folds(labels, probe.cv_folds(labels), seed)
        best = None
        for l2 in probe.L2_GRID:
            losses = []
            for held in folds:
                keep = torch.ones(len(idx), dtype=torch.bool)
                keep[held] = False
                fit = [i for i, k in zip(idx, keep.tolist(), strict=True) if k]
                x, y = self.rows(fit, "both")
                head = probe.fit_logistic(probe.make_head(x.shape[1], 2), x, y, l2, 15)
                test_x, test_y = self.rows([idx[i] for i in held.tolist()], "plain")
                with torch.no_grad():
                    losses.append(F.cross_entropy(head(test_x), test_y).item())
            score = (sum(losses) / len(losses), -l2)
            best = min(best or score, score)
        return -best[1]

    def fit(self, idx: list[int], views: str, l2: float):
        from worker.engines import probe

        x, y = self.rows(idx, views)
        return probe.fit_logistic(probe.make_head(x.shape[1], 2), x, y, l2, self.config.epochs)

    def ship(self, variant: str, pool: list[int], seed: int):
        """(head, λ, test views) that ``variant`` ships for a job on ``pool``."""
        names, labels = self.f["names"], self.f["labels"]
        train, val = _job_split(pool, labels, names, self.config.val_split, seed)
        if variant == "train_only":
            l2 = self.cv(train, "plain", seed)
            return self.fit(train, "plain", l2), l2, "plain"
        if variant in ("refit_same_l2", "augment"):
            return self._engine(train, val, seed, augment=variant == "augment")
        if variant == "refit_cv_all":
            l2 = self.cv(train + val, "plain", seed)
            return self.fit(train + val, "plain", l2), l2, "plain"
        if variant == "augment_grouped_cv":
            l2 = self.cv(train, "both", seed, grouped=True)
            return self.fit(train + val, "both", l2), l2, "plain"
        if variant == "mirror_averaged":
            l2 = self.cv(train, "avg", seed)
            return self.fit(train + val, "avg", l2), l2, "avg"
        raise ValueError(variant)

    def _engine(self, train: list[int], val: list[int], seed: int, augment: bool):
        """The engine's own probe head (as a job with ``augment`` runs it)."""
        from dataclasses import replace

        from worker.engines.finetune import _Best, _Features, _probe_head, make_head
        from worker.engines.finetune_progress import Tracker

        config = replace(self.config, seed=seed, augment=augment)
        views = "both" if augment else "plain"
        x, y = self.rows(train, views)
        val_x, val_y = self.rows(val, "plain")
        refit_x, refit_y = self.rows(val, views)
        feats = _Features(x, y, val_x, val_y, 0.0, 0, len(train), refit_x, refit_y)
        head = make_head(x.shape[1], 2)
        record, _ = _probe_head(head, feats, config, Tracker(None, config.epochs), _Best(), 2)
        return head, record["l2"], "plain"

    def accuracy(self, head, idx: list[int], views: str, tta: bool) -> float:
        import torch

        t, y = torch.tensor(idx, dtype=torch.long), self.f["labels"]
        with torch.no_grad():
            if views == "avg":
                logits = head(self.avg[t])
            elif tta:
                logits = (head(self.f["plain"][t]) + head(self.f["flip"][t])) / 2
            else:
                logits = head(self.f["plain"][t])
        return (logits.argmax(1) == y[t]).float().mean().item()


def run_variant(jobs: Jobs, variant: str) -> dict:
    from worker.engines.probe import stratified_folds

    n_pool, labels = jobs.f["n_pool"], jobs.f["labels"]
    pool, test = list(range(n_pool)), list(range(n_pool, len(labels)))
    started = time.monotonic()
    scoring = (False,) if variant == "mirror_averaged" else (False, True)
    fixed = {tta: [] for tta in scoring}
    kfold = {tta: [] for tta in scoring}
    l2s = []
    for seed in range(SEEDS):
        head, l2, views = jobs.ship(variant, pool, seed)
        l2s.append(l2)
        for tta in scoring:
            fixed[tta].append(jobs.accuracy(head, test, views, tta))
    for repeat in range(REPEATS):
        for held in stratified_folds(labels[:n_pool], FOLDS, 1000 + repeat):
            part = sorted(set(pool) - set(held.tolist()))
            head, _, views = jobs.ship(variant, part, repeat)
            for tta in scoring:
                kfold[tta].append(jobs.accuracy(head, held.tolist(), views, tta))
    seconds = round(time.monotonic() - started, 1)
    out = {}
    for tta in scoring:
        name = variant + ("+test_time_flips" if tta else "")
        out[name] = {
            "kfold": _summary(kfold[tta]),
            "test_fold": {**_summary(fixed[tta]), "per_seed": [round(a, 4) for a in fixed[tta]]},
            "l2_per_seed": l2s,
            "seconds_all_jobs": seconds,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="<class>/<image> folder")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--test-per-class", type=int, default=15)
    parser.add_argument("--features", type=Path, default=None, help="feature cache file")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/finetune_ablation.json"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # head fits this small only pay threads' overhead
    load_at_start = os.getloadavg()
    jobs = Jobs(load_features(args.data, args.test_per_class, args.features))
    rows = {}
    for variant in args.variants.split(","):
        rows.update(run_variant(jobs, variant))
        print(variant, json.dumps({k: v["kfold"] for k, v in rows.items()}), flush=True)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    third = report.get("third_round", {})
    third.update(
        {
            "what": (
                "what the shipped linear-probe head is fitted on, training-time mirrored "
                "copies and test-time flips; per job: the seeded val_split split, lambda "
                "by CV, the variant's head; decided on k-fold over the pool, the fixed "
                "test fold reported only (see the script's docstring)"
            ),
            "command": "python benchmarks/finetune_ablation.py --data <hymenoptera>/train",
            "precision": jobs.f["precision"],
            "jobs": f"{SEEDS} seeds on the pool (fixed fold), {FOLDS}-fold x {REPEATS} (k-fold)",
        }
    )
    third.setdefault("variants", {}).update(rows)
    third.setdefault("load_average", []).append(
        {"variants": args.variants, "start": load_at_start, "end": os.getloadavg()}
    )
    report["third_round"] = third
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
