"""Transfer learning on an image-folder dataset: pretrained backbone + a new linear head.

Strategies (every one starts by fitting the head on features computed once, because a
random head's gradients would wreck pretrained features — fastai's ``fine_tune``):

* ``linear_probe`` — the backbone stays frozen; features of every image are computed
  once and cached, and the head is a logistic regression whose L2 strength is chosen by
  cross-validation on the training images (``probe.py``; ``weight_decay`` set: that λ).
  That head's accuracy on the validation images is the job's metrics (nothing is picked
  by them); the head that ships is then refitted with the same λ on the training and
  validation images together, so the model has learnt from every labelled image.
* ``full`` — after the head, everything trains, the deepest backbone stage at
  ``lr × 0.1`` and each earlier one at ``lr_decay`` times the rate above it (ULMFiT's
  discriminative rates; ``lr_decay`` 1 = the whole backbone at ``lr × 0.1``).
* ``gradual`` — after the head, one more backbone stage (the last first) unfreezes each
  epoch (ULMFiT's gradual unfreezing), at the same per-stage rates.
* ``auto`` — one of those, chosen from the dataset's size and ``max_seconds``
  (``auto.py``), recorded with the reason in ``metrics["auto"]``.

For full and gradual, the best epoch (validation accuracy, then loss) is kept. The
checkpoint is complete enough to predict without this module's state: class names,
preprocessing, backbone id, feature layers and weights (head only for a linear probe,
whose backbone is the bundled one, checked by sha256). Entry points: :func:`fine_tune`
and :func:`load_model`; both plain PyTorch.

Resume (full and gradual): at the end of a network epoch (every one, or the first one a
given interval after the last) the run hands out its state (checkpoint.py's
``TrainingCheckpoint``); given it back, a run with the same config and dataset skips the
features and the head's warm-up and continues with the next epoch, ending bit for bit
where an uninterrupted run ends (CPU, one thread, same seed). Python's ``random`` and
numpy draw nothing during training (the split is seeded on its own), so the torch RNG
and the run's data generator are all the randomness there is to restore.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from shared.kinds.fine_tune import SPEC, STRATEGY_DEFAULTS

from . import auto
from . import checkpoint as checkpoints
from . import datasets as ds
from .backbones import (
    LEGACY_VGG_FEATURE_LAYERS,
    Backbone,
    backbone_weights_identity,
    build_backbone,
)
from .errors import InvalidInput
from .finetune_progress import FinetuneProgress, Tracker, batch_count
from .finetune_report import classification_report, model_card
from .probe import L2_GRID, Standardize, choose_l2, cv_folds, fit_logistic, make_head
from .spec_check import check_device, check_engine_values

PRECISIONS = ("auto", "fp32", "bf16")
CHECKPOINT_FORMAT = "atelier-finetune/1"
BACKBONE_LR_FACTOR = 0.1
HEAD_WARMUP_EPOCHS = 10  # cached-feature head epochs before full / gradual training


@dataclass(frozen=True)
class FinetuneConfig:
    """Resolved parameters, recorded in metrics.json and the checkpoint."""

    backbone: str
    strategy: str  # "auto" only until fine_tune resolves it (_resolve_auto)
    epochs: int
    batch_size: int
    lr: float
    lr_decay: float  # full / gradual: each earlier backbone stage's LR factor
    weight_decay: float | None  # linear_probe: None = chosen by cross-validation
    image_size: int
    val_split: float
    augment: bool
    label_smoothing: float
    schedule: str
    early_stopping: int
    seed: int
    max_seconds: int | None
    device: str
    precision: str  # resolved: fp32 or bf16

    @classmethod
    def resolve(cls, **overrides: Any) -> FinetuneConfig:
        """Check a caller's values against the kind's spec and fill every default.

        ``overrides`` are the engine params of shared/kinds/fine_tune.py plus ``device``
        and ``precision``; None means "the default": the spec's fixed ones, then the
        chosen strategy's (``STRATEGY_DEFAULTS``); a missing seed is drawn and recorded.
        ``strategy="auto"`` leaves the strategy's defaults unset until :func:`fine_tune`
        knows the dataset (:func:`_resolve_auto`). Raises InvalidInput naming the field at
        fault (unknown names too).
        """
        device = check_device(overrides.pop("device", None) or "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        precision = _resolve_precision(device, overrides.pop("precision", None) or "auto")
        values = check_engine_values(SPEC, overrides)
        strategy = STRATEGY_DEFAULTS[values["strategy"]]
        values = check_engine_values(
            SPEC, {**values, **{k: v for k, v in strategy.items() if values[k] is None}}
        )
        if values["seed"] is None:
            values["seed"] = SPEC.param("seed").draw()
        return cls(**values, device=device, precision=precision)


@dataclass
class FinetuneResult:
    checkpoint: bytes
    metrics: dict[str, Any]
    model_card: str
    classes: list[str]
    config: FinetuneConfig


__all__ = ["FinetuneConfig", "FinetuneResult", "Standardize", "fine_tune", "load_model"]


def _resolve_precision(device: str, precision: str) -> str:
    """auto: bf16 where the hardware has fast bf16 (CUDA, CPUs with AMX/AVX512-BF16).

    On such CPUs oneDNN runs bf16 convolutions about 3x faster than fp32 (channels-last);
    features differ from fp32 by under 1 %, far below what changes a classifier.
    """
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}", "precision")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def _autocast(config_device: str, precision: str):
    device_type = "cuda" if config_device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _prepare(module: nn.Module, device: str, precision: str) -> nn.Module:
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if precision == "bf16" else module


def _inputs(batch: torch.Tensor, device: str, precision: str) -> torch.Tensor:
    batch = batch.to(device)
    return batch.contiguous(memory_format=torch.channels_last) if precision == "bf16" else batch


@dataclass
class _Features:
    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    seconds: float
    images: int  # views through the backbone (feature images per second)
    train_images: int = 0  # distinct training images (``train`` has one row per view)
    # A linear probe's refit: every view of the validation images (``val`` is the plain one)
    refit_val: torch.Tensor | None = None
    refit_val_labels: torch.Tensor | None = None


def _flips(config: FinetuneConfig) -> tuple[bool, ...]:
    """Feature views of each training image: mirrored copies too when augmenting."""
    return (False, True) if config.augment else (False,)


def _resolve_auto(
    config: FinetuneConfig, dataset: ds.ImageDataset
) -> tuple[FinetuneConfig, dict[str, Any] | None]:
    """``auto`` becomes a concrete strategy (its defaults fill what is unset) + the record."""
    if config.strategy != "auto":
        return config, None
    images = len(dataset.train) + len(dataset.val or [])
    train = dataset.train
    if not dataset.val:  # the counts of the split fine_tune makes (the same for any seed)
        train = ds.split(dataset.train, config.val_split, config.seed)[0]
    per_class = [sum(it.label == c for it in train) for c in range(len(dataset.classes))]
    choice = auto.choose(
        images,
        len(dataset.classes),
        config.image_size,
        config.device,
        config.max_seconds,
        backbone=config.backbone,
        smallest_class=min(per_class, default=0),
        weight_decay=config.weight_decay,
    )
    defaults = STRATEGY_DEFAULTS[choice.strategy]
    fills = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    config = replace(config, strategy=choice.strategy, **fills)
    budget = config.max_seconds or auto.DEFAULT_BUDGET_SECONDS
    return config, choice.record(budget)


def _plan(
    tracker: Tracker, config: FinetuneConfig, n_train: int, n_val: int, labels: torch.Tensor
) -> None:
    """Units of the parts after decoding, from the bounds their loops iterate over.

    A linear probe's head: one unit per cross-validation fit, one per L-BFGS round of
    each of its two fits (on the training images, then the shipped one on train + val).
    """
    bs = config.batch_size
    views = len(_flips(config))
    network = 0
    if config.strategy != "linear_probe":
        network = config.epochs * (batch_count(n_train, bs) + batch_count(n_val, bs))
        head = HEAD_WARMUP_EPOCHS * batch_count(views * n_train, bs)
    else:
        folds = cv_folds(labels)
        cv = len(L2_GRID) * folds if config.weight_decay is None and folds >= 2 else 0
        head = cv + 2 * config.epochs
    tracker.plan(
        features=(
            views * batch_count(n_train, bs) + len(_val_flips(config)) * batch_count(n_val, bs)
        ),
        head=head,
        network=network,
    )


@torch.inference_mode()
def _extract(
    backbone: Backbone,
    data: ds.DecodedSet,
    config: FinetuneConfig,
    tracker: Tracker,
    flips: tuple[bool, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for flip in flips:
        for batch, target in ds.batches(
            data, image_size=config.image_size, batch_size=config.batch_size, flip=flip
        ):
            with _autocast(config.device, config.precision):
                out = backbone(_inputs(batch, config.device, config.precision))
            feats.append(out.float().cpu())
            labels.append(target)
            tracker.advance("features", "computing features")
    return torch.cat(feats), torch.cat(labels)


def _val_flips(config: FinetuneConfig) -> tuple[bool, ...]:
    """Feature views of each validation image: a linear probe's shipped head is refitted
    on them as on the training images (mirrored copies too when augmenting)."""
    return _flips(config) if config.strategy == "linear_probe" else (False,)


def _features(
    backbone: Backbone, decoded: ds.Decoded, config: FinetuneConfig, tracker: Tracker
) -> _Features:
    """Every image through the frozen backbone once; flipped copies when augmenting."""
    started = time.monotonic()
    backbone.eval()
    train, train_labels = _extract(backbone, decoded.train, config, tracker, _flips(config))
    val_all, val_all_labels = _extract(backbone, decoded.val, config, tracker, _val_flips(config))
    tracker.finish("features")
    n_val = len(decoded.val.images)  # _extract puts the plain views first
    return _Features(
        train,
        train_labels,
        val_all[:n_val],
        val_all_labels[:n_val],
        time.monotonic() - started,
        len(train) + len(val_all),
        len(decoded.train.images),
        val_all,
        val_all_labels,
    )


def _lr_at(config: FinetuneConfig, base: float, step: int, steps: int) -> float:
    if config.schedule == "constant" or steps <= 1:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * step / steps))


@dataclass
class _Best:
    score: tuple[float, float] = (-1.0, -math.inf)
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, epoch: int, accuracy: float, loss: float, module: nn.Module) -> bool:
        score = (round(accuracy, 6), -loss)
        if score > self.score:
            self.score, self.epoch, self.stale = score, epoch, 0
            self.state = copy.deepcopy(module.state_dict())
            return True
        self.stale += 1
        return False


def _evaluate_features(
    head: nn.Module, feats: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float, torch.Tensor]:
    with torch.inference_mode():
        logits = head(feats)
        loss = F.cross_entropy(logits, labels).item()
        preds = logits.argmax(1)
    return loss, (preds == labels).float().mean().item(), preds


def _train_head(
    head: nn.Sequential,
    feats: _Features,
    config: FinetuneConfig,
    epochs: int,
    tracker: Tracker,
    best: _Best,
    gen: torch.Generator,
) -> None:
    """Warm-up head epochs on cached features before full / gradual training."""
    head[0].fit(feats.train)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(feats.train) / config.batch_size)
    steps, step = epochs * per_epoch, 0
    for epoch in range(1, epochs + 1):
        started, losses, correct = time.monotonic(), [], 0
        head.train()
        for idx in torch.randperm(len(feats.train), generator=gen).split(config.batch_size):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(config, config.lr, step, steps)
            logits = head(feats.train[idx])
            loss = F.cross_entropy(
                logits, feats.train_labels[idx], label_smoothing=config.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item() * len(idx))
            correct += (logits.argmax(1) == feats.train_labels[idx]).sum().item()
            tracker.advance("head", "training head", epoch, loss.item())
        head.eval()
        val_loss, val_acc, _ = _evaluate_features(head, feats.val, feats.val_labels)
        best.update(epoch, val_acc, val_loss, head)
        tracker.best = best.score[0]
        best.history.append(
            _epoch_record(
                epoch,
                "head",
                sum(losses) / len(feats.train),
                correct / len(feats.train),
                val_loss,
                val_acc,
                optimizer.param_groups[0]["lr"],
                started,
            )
        )
        tracker.advance("head", "training head", epoch, val_loss, val_acc, units=0)
        if config.early_stopping and best.stale >= config.early_stopping:
            break


def _probe_head(
    head: nn.Sequential,
    feats: _Features,
    config: FinetuneConfig,
    tracker: Tracker,
    best: _Best,
    classes: int,
) -> tuple[dict[str, Any], torch.Tensor]:
    """The linear probe's head, fitted twice: once to report, once to ship.

    1. λ by cross-validation on the training images (unless given), the head fitted on
       them; each L-BFGS round is recorded like an epoch (train and validation loss,
       accuracy) and its predictions on the validation images are the job's metrics,
       so those images stay unseen by what is scored on them and choose nothing.
    2. The head that ships: refitted with the same λ on the training and validation
       images together, so the model a user downloads has learnt from every labelled
       image. Holding a fifth out of the shipped head cost accuracy and made it depend on
       which fifth the seed held out; choosing λ again by cross-validation on all of them
       scored the same on k-fold and costs a second CV pass
       (benchmarks/results/finetune_ablation.json, ``third_round``).

    Returns ``metrics["head"]`` and the validation predictions of step 1; ``head`` and
    ``best.state`` hold the shipped head.
    """
    l2, cv = config.weight_decay, None
    if l2 is None:
        cv = choose_l2(
            feats.train,
            feats.train_labels,
            classes,
            config.seed,
            config.epochs,
            on_fit=lambda: tracker.advance("head", "cross-validating head"),
        )
        l2 = cv.l2
    started = time.monotonic()

    def on_round(r: int, loss: float) -> None:
        nonlocal started
        head.eval()
        train_loss, train_acc, _ = _evaluate_features(head, feats.train, feats.train_labels)
        val_loss, val_acc, _ = _evaluate_features(head, feats.val, feats.val_labels)
        best.history.append(
            _epoch_record(r, "head", train_loss, train_acc, val_loss, val_acc, 1.0, started)
        )
        best.score, best.epoch, tracker.best = (round(val_acc, 6), -val_loss), r, val_acc
        tracker.advance("head", "training head", r, loss, val_acc)
        started = time.monotonic()

    fit_logistic(
        head,
        feats.train,
        feats.train_labels,
        l2,
        config.epochs,
        config.label_smoothing,
        on_round,
    )
    _, _, val_preds = _evaluate_features(head, feats.val, feats.val_labels)
    assert feats.refit_val is not None and feats.refit_val_labels is not None
    fit_logistic(
        head,
        torch.cat([feats.train, feats.refit_val]),
        torch.cat([feats.train_labels, feats.refit_val_labels]),
        l2,
        config.epochs,
        config.label_smoothing,
        lambda r, loss: tracker.advance("head", "refitting head on train+val", r, loss),
    )
    best.state = copy.deepcopy(head.state_dict())
    n_train, n_val = feats.train_images, len(feats.val)
    record = cv.record() if cv is not None else {"l2": l2, "reason": "weight_decay given"}
    return {
        **record,
        "objective": "cross-entropy + l2/2 * |W|^2, standardised features",
        "refit_on": "train+val",
        "refit_images": {"train": n_train, "val": n_val, "total": n_train + n_val},
        "val_metrics_from": "a head fitted on the training images only, with the same λ; "
        "the shipped head was refitted on train+val, so it has seen the validation images",
    }, val_preds


def _epoch_record(
    epoch: int,
    phase: str,
    train_loss: float,
    train_acc: float,
    val_loss: float,
    val_acc: float,
    lr: float,
    started: float,
) -> dict:
    return {
        "epoch": epoch,
        "phase": phase,
        "train_loss": round(train_loss, 5),
        "train_accuracy": round(train_acc, 5),
        "val_loss": round(val_loss, 5),
        "val_accuracy": round(val_acc, 5),
        "lr": lr,
        "seconds": round(time.monotonic() - started, 3),
    }


class Classifier(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Sequential) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def _set_trainable(model: Classifier, config: FinetuneConfig, epoch: int) -> int:
    """Unfreeze per strategy; returns how many backbone stages train this epoch."""
    stages = model.backbone.stages
    count = len(stages) if config.strategy == "full" else min(len(stages), epoch)
    model.train()
    model.backbone.requires_grad_(False)
    for i, stage in enumerate(stages):
        trainable = i >= len(stages) - count
        stage.requires_grad_(trainable)
        stage.train(trainable)  # frozen BatchNorm keeps its running statistics
    return count


def _evaluate_model(
    model: Classifier, data: ds.DecodedSet, config: FinetuneConfig
) -> tuple[float, float, torch.Tensor]:
    model.eval()
    logits = []
    with torch.inference_mode():
        for batch, _ in ds.batches(
            data, image_size=config.image_size, batch_size=config.batch_size
        ):
            with _autocast(config.device, config.precision):
                out = model(_inputs(batch, config.device, config.precision))
            logits.append(out.float().cpu())
    logits_all = torch.cat(logits)
    loss = F.cross_entropy(logits_all, data.labels).item()
    preds = logits_all.argmax(1)
    return loss, (preds == data.labels).float().mean().item(), preds


def _param_groups(model: Classifier, config: FinetuneConfig) -> list[dict[str, Any]]:
    """The head at ``lr``; the deepest backbone stage at ``lr × 0.1`` and each earlier
    one at ``lr_decay`` times the one above it (ULMFiT's discriminative rates); any
    backbone parameter outside the stages goes with the shallowest stage."""
    groups = [{"params": list(model.head.parameters()), "base": config.lr}]
    stages = model.backbone.stages
    seen: set[int] = set()
    for depth, stage in enumerate(reversed(stages)):
        params = [p for p in stage.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        base = config.lr * BACKBONE_LR_FACTOR * config.lr_decay**depth
        groups.append({"params": params, "base": base})
    rest = [p for p in model.backbone.parameters() if id(p) not in seen]
    if rest:
        groups[-1]["params"] = groups[-1]["params"] + rest
    return [{**group, "lr": group["base"]} for group in groups if group["params"]]


def _train_network(
    model: Classifier,
    decoded: ds.Decoded,
    config: FinetuneConfig,
    tracker: Tracker,
    best: _Best,
    gen: torch.Generator,
    saves: checkpoints.EpochCheckpoints,
) -> None:
    """End-to-end epochs (full / gradual) after the head; backbone at lower LRs.

    An epoch ends with a checkpoint when ``saves`` has a writer and one is due; with one
    to resume from, the run continues after its epoch as if it had never stopped.
    """
    optimizer = torch.optim.AdamW(_param_groups(model, config), weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(decoded.train.images) / config.batch_size)
    val_batches = batch_count(len(decoded.val.images), config.batch_size)
    steps, done, step = config.epochs * per_epoch, 0, 0
    if saves.resume is None:
        best.stale = 0
    else:
        done, step = saves.restore(model, optimizer, best, gen)
        tracker.best = best.score[0]
        tracker.skip("network", done * (per_epoch + val_batches))
    for epoch in range(done + 1, config.epochs + 1):
        if config.early_stopping and best.stale >= config.early_stopping:
            break
        started = time.monotonic()
        losses, correct = _train_epoch(
            model, decoded.train, config, optimizer, (epoch, step, steps), tracker, gen
        )
        step += per_epoch
        val_loss, val_acc, _ = _evaluate_model(model, decoded.val, config)
        best.update(HEAD_WARMUP_EPOCHS + epoch, val_acc, val_loss, model)
        tracker.best = best.score[0]
        n = len(decoded.train.images)
        best.history.append(
            _epoch_record(
                HEAD_WARMUP_EPOCHS + epoch,
                config.strategy,
                losses / n,
                correct / n,
                val_loss,
                val_acc,
                optimizer.param_groups[0]["lr"],
                started,
            )
        )
        tracker.advance("network", "validating", epoch, val_loss, val_acc, units=val_batches)
        saves.save(epoch, step, model, optimizer, best, gen)


def _train_epoch(
    model: Classifier,
    data: ds.DecodedSet,
    config: FinetuneConfig,
    optimizer: torch.optim.Optimizer,
    position: tuple[int, int, int],
    tracker: Tracker,
    gen: torch.Generator,
) -> tuple[float, int]:
    """Network epoch ``epoch`` (1-based), one pass over ``data`` from optimiser step
    ``step`` of ``steps`` (``position``); returns the summed loss and the number right."""
    epoch, step, steps = position
    losses, correct = 0.0, 0
    unfrozen = _set_trainable(model, config, epoch)
    stage = f"training ({unfrozen} stages unfrozen)"
    for batch, target in ds.batches(
        data,
        image_size=config.image_size,
        batch_size=config.batch_size,
        augment=config.augment,
        gen=gen,
        shuffle=True,
    ):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(config, group["base"], step, steps)
        with _autocast(config.device, config.precision):
            logits = model(_inputs(batch, config.device, config.precision)).float()
        target = target.to(config.device)
        loss = F.cross_entropy(logits, target, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses += loss.item() * len(target)
        correct += (logits.argmax(1) == target).sum().item()
        tracker.advance("network", stage, epoch, loss.item())
    return losses, correct


def fine_tune(
    dataset: ds.ImageDataset,
    config: FinetuneConfig | None = None,
    *,
    on_progress: Callable[[FinetuneProgress], None] | None = None,
    checkpoint: bytes | None = None,
    on_checkpoint: Callable[[bytes], None] | None = None,
    checkpoint_seconds: float = 0.0,
) -> FinetuneResult:
    """Train a classifier for ``dataset`` with ``config`` (None: every default, drawn seed).

    ``config`` comes from ``FinetuneConfig.resolve(...)``, which checks it against the
    kind's spec. ``on_progress`` runs after every decoded image and every batch, and may
    raise (e.g. Canceled) to stop. For full and gradual, ``on_checkpoint`` receives the
    run's state as bytes after a network epoch, every epoch once ``checkpoint_seconds``
    passed since the last one (0: every epoch); given such bytes back as
    ``checkpoint``, a run with the same config and dataset skips the features and the
    head's warm-up and continues after that epoch, ending with the same weights and
    metrics (timings aside) as a run that never stopped. Other bytes are ignored (logged).
    """
    config = FinetuneConfig.resolve() if config is None else config
    config, auto_record = _resolve_auto(config, dataset)
    started = time.monotonic()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    layers = tuple(auto_record["feature_layers"]) if auto_record else ()
    backbone = build_backbone(config.backbone, layers=layers or None)  # auto's, or the default
    backbone = _prepare(backbone, config.device, config.precision)
    n_all = len(dataset.train) + len(dataset.val or [])
    tracker = Tracker(on_progress, config.epochs)
    tracker.plan(decode=n_all)
    # Until decoding says which images are readable: the split of all of them.
    train, val = (
        (dataset.train, dataset.val)
        if dataset.val
        else ds.split(dataset.train, config.val_split, config.seed)
    )
    _plan(tracker, config, len(train), len(val), torch.tensor([it.label for it in train]))
    decoded = ds.decode_all(
        dataset,
        image_size=config.image_size,
        val_split=config.val_split,
        seed=config.seed,
        progress=lambda done, total: tracker.advance("decode", "decoding images"),
    )
    tracker.finish("decode")
    _plan(
        tracker,
        config,
        len(decoded.train.images),
        len(decoded.val.images),
        decoded.train.labels,
    )
    decode_seconds = time.monotonic() - started
    backbone.requires_grad_(False)
    saves = _epoch_checkpoints(
        config, dataset.classes, decoded, (checkpoint, on_checkpoint, checkpoint_seconds)
    )
    head = make_head(backbone.feature_dim, len(dataset.classes)).to("cpu")
    best = _Best()
    extra: dict[str, Any] = {} if auto_record is None else {"auto": auto_record}
    feats, probe_preds = None, None
    if saves.resume is not None:  # the head's warm-up (all the features served) is in it
        tracker.skip("features")
        tracker.skip("head")
    else:
        feats = _features(backbone, decoded, config, tracker)
        if config.strategy == "linear_probe":
            extra["head"], probe_preds = _probe_head(
                head, feats, config, tracker, best, len(dataset.classes)
            )
            # Record the λ used, so the card, checkpoint and a rerun with this config agree.
            config = replace(config, weight_decay=extra["head"]["l2"])
        else:
            _train_head(head, feats, config, HEAD_WARMUP_EPOCHS, tracker, best, gen)
        tracker.finish("head")
        head.load_state_dict(best.state)
    model = Classifier(backbone, head.to(config.device))
    train_started = time.monotonic()
    if config.strategy != "linear_probe":
        if saves.resume is None:  # the best so far: the warmed-up head, pretrained backbone
            best.state = {f"head.{k}": v for k, v in best.state.items()}
            best.state.update(
                {f"backbone.{k}": v.clone() for k, v in backbone.state_dict().items()}
            )
        _train_network(model, decoded, config, tracker, best, gen, saves)
        extra["checkpoints"] = saves.metrics()
        tracker.finish("network")
        model.load_state_dict(best.state)
        _, _, preds = _evaluate_model(model, decoded.val, config)
    else:
        assert probe_preds is not None  # a linear probe never resumes
        preds = probe_preds  # the train-only head's: the shipped one saw these images
    seconds = time.monotonic() - started
    feature_seconds, feature_images = (0.0, 0) if feats is None else (feats.seconds, feats.images)
    timings = {
        "decode_seconds": round(decode_seconds, 3),
        "feature_seconds": round(feature_seconds, 3),
        "feature_images_per_second": round(feature_images / max(feature_seconds, 1e-9), 2),
        "network_train_seconds": round(time.monotonic() - train_started, 3),
        "seconds": round(seconds, 3),
        "images_per_second": round(n_all / max(seconds, 1e-9), 2),
    }
    metrics = {**_metrics(config, dataset.classes, decoded, best, preds, timings), **extra}
    model_pt = _checkpoint(model, config, dataset.classes, best, metrics)
    card = model_card(config=asdict(config), metrics=metrics)
    tracker.end()
    return FinetuneResult(model_pt, metrics, card, list(dataset.classes), config)


def _epoch_checkpoints(
    config: FinetuneConfig,
    classes: list[str],
    decoded: ds.Decoded,
    store: tuple[bytes | None, Callable[[bytes], None] | None, float],
) -> checkpoints.EpochCheckpoints:
    """Checkpointing of full / gradual runs (none for a linear probe, which has no epochs
    to save: its cost is the feature pass, and a restart repeats only that).

    The fingerprint covers the resolved config (seed, device and precision included) and
    the decoded dataset's names and labels, so no other run's state is ever taken.
    ``store`` is (the bytes to resume from, where new ones go, the interval between them).
    """
    if config.strategy == "linear_probe":
        return checkpoints.EpochCheckpoints(None, None)
    key = checkpoints.fingerprint(
        asdict(config),
        classes=list(classes),
        train=[decoded.train.names, decoded.train.labels.tolist()],
        val=[decoded.val.names, decoded.val.labels.tolist()],
    )
    data, sink, seconds = store
    return checkpoints.EpochCheckpoints.start(key, data, sink, config.epochs, seconds)


def _metrics(
    config: FinetuneConfig,
    classes: list[str],
    decoded: ds.Decoded,
    best: _Best,
    preds: torch.Tensor,
    timings: dict,
) -> dict[str, Any]:
    report = classification_report(decoded.val.labels.tolist(), preds.tolist(), classes)
    count = lambda labels: {c: int((labels == i).sum()) for i, c in enumerate(classes)}  # noqa: E731
    return {
        "accuracy": report["accuracy"],
        "best_epoch": best.epoch,
        "val_loss": round(-best.score[1], 5),
        "classes": classes,
        **report,
        "epochs": best.history,
        "val_predictions": [
            {"name": name, "label": classes[t], "predicted": classes[p]}
            for name, t, p in zip(
                decoded.val.names[:1000], decoded.val.labels.tolist(), preds.tolist(), strict=False
            )
        ],
        "dataset": {
            "train": count(decoded.train.labels),
            "val": count(decoded.val.labels),
            "unreadable": len(decoded.unreadable),
            "unreadable_files": decoded.unreadable[:50],
        },
        "config": asdict(config),
        "timings": timings,
        "device": config.device,
    }


def _checkpoint(
    model: Classifier, config: FinetuneConfig, classes: list[str], best: _Best, metrics: dict
) -> bytes:
    probe = config.strategy == "linear_probe"
    state = {
        "format": CHECKPOINT_FORMAT,
        "backbone": config.backbone,
        "classes": list(classes),
        "image_size": config.image_size,
        "resize_size": ds.resize_size(config.image_size),
        "preprocessing": model.backbone.preprocessing(),
        "feature_layers": list(model.backbone.feature_layers),
        "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
        "backbone_state": None
        if probe
        else {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
        "backbone_weights": backbone_weights_identity(config.backbone),
        "params": asdict(config),
        "epoch": best.epoch,
        "val_accuracy": metrics["accuracy"],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@dataclass
class FineTunedModel:
    """A reloaded checkpoint: ``predict`` gives top-k labels for raw image bytes."""

    model: Classifier
    classes: list[str]
    image_size: int
    device: str
    precision: str
    info: dict[str, Any]

    def crop(self, data: bytes, limits: ds.ImageLimits = ds.DEFAULT_LIMITS) -> torch.Tensor:
        """The uint8 centre square the model sees; ValueError when the image is unusable.

        Apart from ``predict`` so a caller can skip (and list) one unreadable image of a
        batch instead of losing the others; ``limits`` are checked from the header first.
        """
        return ds.center_crop(ds.decode(data, self.image_size, limits), self.image_size)

    def predict(self, images: list[bytes], top_k: int = 3) -> list[list[dict[str, Any]]]:
        """Top-k (label, probability) per image, in one batch; InvalidInput if one is unreadable."""
        crops = []
        for i, data in enumerate(images):
            try:
                crops.append(self.crop(data))
            except ValueError as exc:
                raise InvalidInput(f"image {i + 1} cannot be read: {exc}", "image") from None
        return self.predict_crops(crops, top_k)

    def predict_crops(
        self, crops: list[torch.Tensor], top_k: int = 3
    ) -> list[list[dict[str, Any]]]:
        """Top-k (label, probability) per ``crop`` result, in one batch."""
        k = min(top_k, len(self.classes))
        batch = _inputs(torch.stack(crops).float().div(255.0), self.device, self.precision)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            probs = F.softmax(self.model(batch).float(), dim=1).cpu()
        values, indices = probs.topk(k, dim=1)
        return [
            [
                {"label": self.classes[j], "probability": round(float(v), 6)}
                for v, j in zip(row_v, row_i.tolist(), strict=True)
            ]
            for row_v, row_i in zip(values, indices, strict=True)
        ]


def load_model(data: bytes, device: str = "cpu") -> FineTunedModel:
    """Rebuild the classifier from ``model.pt`` bytes (weights_only: no code is unpickled)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise InvalidInput(f"model.pt cannot be loaded ({exc})", "model") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInput("model.pt is not an Atelier fine-tune checkpoint", "model")
    name = state["backbone"]
    legacy = LEGACY_VGG_FEATURE_LAYERS if name == "vgg19" else ()
    layers = tuple(state.get("feature_layers", legacy))
    if state["backbone_state"] is None:
        identity = backbone_weights_identity(name)
        if identity["sha256"] != state["backbone_weights"]["sha256"]:
            raise InvalidInput(
                f"the installed {name} weights ({identity['file']}) differ from the ones this "
                "model was trained on; reinstall them or fine-tune again",
                "model",
            )
        backbone = build_backbone(name, layers=layers)
    else:
        backbone = build_backbone(name, pretrained=False, layers=layers)
        backbone.load_state_dict(state["backbone_state"])
    head = make_head(backbone.feature_dim, len(state["classes"]))
    head.load_state_dict(state["head"])
    # Predict with the precision the model was validated with (fp32 where bf16 is slow).
    precision = _resolve_precision(device, state["params"].get("precision", "fp32"))
    if precision == "bf16" and _resolve_precision(device, "auto") == "fp32":
        precision = "fp32"
    model = _prepare(Classifier(backbone, head), device, precision).eval()
    model.requires_grad_(False)
    info = {k: state[k] for k in ("backbone", "params", "epoch", "val_accuracy")}
    return FineTunedModel(
        model, list(state["classes"]), int(state["image_size"]), device, precision, info
    )
