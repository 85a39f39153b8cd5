"""A fine-tune run stopped after an epoch and resumed from its checkpoint ends with the
same weights and metrics, bit for bit, as one that never stopped (CPU, one thread, fixed
seed, real VGG19 on drawn shapes); and the backbone's learning rates and unfreezing order.
"""

from __future__ import annotations

import io

import pytest
import torch

from tests.finetune_data import CLASSES, shape_files
from worker.engines import checkpoint as checkpoints
from worker.engines.backbones import build_backbone
from worker.engines.datasets import ImageDataset, LabeledImage
from worker.engines.errors import Canceled
from worker.engines.finetune import (
    BACKBONE_LR_FACTOR,
    Classifier,
    FinetuneConfig,
    FinetuneProgress,
    FinetuneResult,
    _param_groups,
    _set_trainable,
    fine_tune,
)
from worker.engines.probe import make_head

# 8 training and 2 validation images of 32 px, two steps per epoch, augmentation on (so
# the data generator's state matters), no early stop: both epochs run
RUN = {
    "image_size": 32,
    "batch_size": 4,
    "epochs": 2,
    "early_stopping": 0,
    "augment": True,
    "lr_decay": 0.5,
    "seed": 5,
    "device": "cpu",
}
TIMING_KEYS = {"timings", "checkpoints"}


class Stop(Canceled):
    """What a worker's callback raises to stop the engine (a drain, a cancel)."""


def _dataset() -> ImageDataset:
    files = shape_files(5, seed=2)
    items = [LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in files.items()]
    return ImageDataset(list(CLASSES), items)


def _run(
    strategy: str, *, stop_in_epoch: int | None = None, checkpoint: bytes | None = None
) -> tuple[FinetuneResult | None, list[bytes], list[FinetuneProgress]]:
    """One run; ``stop_in_epoch`` stops it at that network epoch's first batch. Returns the
    result (None when stopped), the checkpoints it handed out and its progress reports."""
    saved: list[bytes] = []
    seen: list[FinetuneProgress] = []

    def on_progress(progress: FinetuneProgress) -> None:
        seen.append(progress)
        if progress.stage.startswith("training (") and progress.epoch == stop_in_epoch:
            raise Stop("stopped for the test")

    config = FinetuneConfig.resolve(strategy=strategy, **RUN)
    try:
        result = fine_tune(
            _dataset(),
            config,
            on_progress=on_progress,
            checkpoint=checkpoint,
            on_checkpoint=saved.append,
        )
    except Stop:
        return None, saved, seen
    return result, saved, seen


def _weights(result: FinetuneResult) -> dict[str, torch.Tensor]:
    state = torch.load(io.BytesIO(result.checkpoint), weights_only=True)
    return {**state["head"], **{f"b.{k}": v for k, v in state["backbone_state"].items()}}


def _trained(data: bytes) -> list[torch.Tensor]:
    """Every tensor of a checkpoint's network and optimiser state: what training reached,
    whichever epoch the run keeps as its best."""
    payload = torch.load(io.BytesIO(data), weights_only=True)
    moments = [t for state in payload["optimizer"]["state"].values() for t in state.values()]
    return [*payload["model"].values(), *moments]


def _without_timings(metrics: dict) -> dict:
    kept = {k: v for k, v in metrics.items() if k not in TIMING_KEYS}
    kept["epochs"] = [{k: v for k, v in e.items() if k != "seconds"} for e in kept["epochs"]]
    return kept


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, tuple[FinetuneResult, list[bytes]]]:
    runs = {}
    for strategy in ("full", "gradual"):
        result, saved, _ = _run(strategy)
        assert result is not None
        runs[strategy] = (result, saved)
    return runs


@pytest.mark.parametrize("strategy", ["full", "gradual"])
def test_a_run_resumed_after_an_epoch_equals_one_never_stopped(uninterrupted, strategy):
    expected, saved_all = uninterrupted[strategy]
    assert len(saved_all) == RUN["epochs"]  # one checkpoint per network epoch
    assert expected.metrics["checkpoints"]["count"] == RUN["epochs"]
    assert expected.metrics["checkpoints"]["bytes"] == sum(map(len, saved_all))
    assert expected.metrics["checkpoints"]["resumed_from"] is None

    stopped, saved, _ = _run(strategy, stop_in_epoch=2)
    assert stopped is None and len(saved) == 1  # epoch 1's
    resumed, saved_after, seen = _run(strategy, checkpoint=saved[-1])
    assert resumed is not None
    assert resumed.metrics["checkpoints"]["resumed_from"] == {"epoch": 1}
    want_state, got_state = _trained(saved_all[-1]), _trained(saved_after[-1])
    assert len(want_state) == len(got_state)
    assert all(torch.equal(w, g) for w, g in zip(want_state, got_state, strict=True))

    want, got = _weights(expected), _weights(resumed)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert _without_timings(resumed.metrics) == _without_timings(expected.metrics)
    # no features computed again; progress picks up where the checkpoint was, ends at total
    assert resumed.metrics["timings"]["feature_seconds"] == 0
    assert not any(p.stage == "computing features" for p in seen)
    assert [p.epoch for p in seen if p.stage.startswith("training (")][0] == 2
    steps = [p.step for p in seen]
    assert steps == sorted(steps) and seen[-1].step == seen[-1].total


def test_the_last_epochs_checkpoint_resumes_to_the_same_model(uninterrupted):
    expected, saved_all = uninterrupted["full"]
    resumed, _, _ = _run("full", checkpoint=saved_all[-1])
    assert resumed is not None
    assert resumed.metrics["checkpoints"]["resumed_from"] == {"epoch": RUN["epochs"]}
    want, got = _weights(expected), _weights(resumed)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert _without_timings(resumed.metrics) == _without_timings(expected.metrics)


def test_another_runs_or_broken_bytes_are_ignored(uninterrupted, caplog):
    _, saved_all = uninterrupted["full"]
    assert checkpoints.load_training(saved_all[0], "another run") is None
    assert checkpoints.load_training(saved_all[0][:100], "anything") is None
    assert checkpoints.load_training(b"", "anything") is None
    assert "ignoring" in caplog.text
    # a style checkpoint is not a training one, even with the same fingerprint
    style = checkpoints.Checkpoint("same", 0, 0, 0, torch.zeros(1, 3, 4, 4)).to_bytes()
    assert checkpoints.load_training(style, "same") is None
    assert checkpoints.load(style, "same") is not None


def test_a_linear_probe_writes_no_checkpoint():
    saved: list[bytes] = []
    config = FinetuneConfig.resolve(strategy="linear_probe", image_size=32, seed=1, epochs=5)
    result = fine_tune(_dataset(), config, on_checkpoint=saved.append)
    assert saved == [] and "checkpoints" not in result.metrics


def _classifier() -> Classifier:
    backbone = build_backbone("vgg19", pretrained=False)
    return Classifier(backbone, make_head(backbone.feature_dim, 2))


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_earlier_backbone_stages_learn_slower_by_lr_decay(decay):
    model = _classifier()
    config = FinetuneConfig.resolve(strategy="full", lr=1e-3, lr_decay=decay, seed=0)
    groups = _param_groups(model, config)
    assert groups[0]["lr"] == pytest.approx(1e-3)  # the head
    stages = list(reversed(model.backbone.stages))  # deepest first, as the groups are
    assert len(groups) == 1 + len(stages)
    for depth, (group, stage) in enumerate(zip(groups[1:], stages, strict=True)):
        assert group["lr"] == pytest.approx(1e-3 * BACKBONE_LR_FACTOR * decay**depth)
        assert {id(p) for p in group["params"]} == {id(p) for p in stage.parameters()}
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters()}  # every parameter, once


def test_gradual_unfreezes_the_last_stage_first():
    model = _classifier()
    config = FinetuneConfig.resolve(strategy="gradual", seed=0)
    stages = model.backbone.stages
    for epoch in range(1, len(stages) + 2):
        assert _set_trainable(model, config, epoch) == min(epoch, len(stages))
        trains = [all(p.requires_grad for p in s.parameters()) for s in stages]
        frozen = len(stages) - min(epoch, len(stages))
        assert trains == [False] * frozen + [True] * (len(stages) - frozen)


def test_an_epoch_checkpoints_only_once_the_interval_has_passed():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    best = type("Best", (), {"score": (0.5, -1.0), "epoch": 1, "state": None})()
    best.stale, best.history = 0, []
    now = [0.0]
    saved: list[bytes] = []
    writer = checkpoints.Checkpointer("key", saved.append, seconds=30, clock=lambda: now[0])
    saves = checkpoints.EpochCheckpoints(None, writer)
    gen = torch.Generator().manual_seed(0)
    for epoch, clock in enumerate((10.0, 29.0, 31.0, 40.0, 70.0), start=1):
        now[0] = clock
        saves.save(epoch, epoch * 2, model, optimizer, best, gen)
    assert [checkpoints.load_training(d, "key").epoch for d in saved] == [3, 5]
    assert saves.metrics() == {"count": 2, "bytes": sum(map(len, saved)), "resumed_from": None}
