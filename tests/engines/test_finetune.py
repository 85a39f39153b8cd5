"""The fine-tuning engine on drawn shapes: it learns, reloads identically, cancels, reports."""

from __future__ import annotations

import json

import pytest
import torch

from tests.finetune_data import CLASSES, make_zip, shape_files
from worker.engines import backbones
from worker.engines.datasets import ImageDataset, LabeledImage, split
from worker.engines.errors import Canceled, InvalidInput, WeightsUnavailable
from worker.engines.finetune import (
    FinetuneConfig,
    FinetuneProgress,
    FinetuneResult,
    fine_tune,
    load_model,
)


def _train(data: ImageDataset, on_progress=None, **overrides) -> FinetuneResult:
    """``fine_tune`` with a config resolved from keywords, as a job's runner does."""
    return fine_tune(data, FinetuneConfig.resolve(**overrides), on_progress=on_progress)


def _dataset(per_class: int = 16, seed: int = 0, broken: int = 0) -> ImageDataset:
    files = shape_files(per_class, seed=seed)
    items = [LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in files.items()]
    for i in range(broken):
        items[i * 2] = LabeledImage(items[i * 2].name, items[i * 2].label, b"not an image")
    return ImageDataset(list(CLASSES), items)


@pytest.fixture(scope="module")
def probe():
    torch.set_num_threads(1)
    seen: list[FinetuneProgress] = []
    result = _train(_dataset(), seen.append, image_size=48, seed=3)
    return result, seen


def test_linear_probe_learns_shapes(probe):
    result, _ = probe
    metrics = result.metrics
    assert metrics["accuracy"] > 0.9
    assert metrics["config"]["strategy"] == "linear_probe" and metrics["config"]["seed"] == 3
    assert metrics["dataset"]["val"] == {"discs": 3, "squares": 3}
    assert set(metrics["per_class"]) == set(CLASSES)
    assert all(
        {"precision", "recall", "f1", "support"} <= set(v) for v in metrics["per_class"].values()
    )
    matrix = metrics["confusion_matrix"]
    assert (
        sum(map(sum, matrix)) == 6
        and sum(matrix[i][i] for i in range(2)) / 6 == metrics["accuracy"]
    )
    curves = metrics["epochs"]
    assert curves and all({"train_loss", "val_loss", "val_accuracy"} <= set(e) for e in curves)
    assert curves[-1]["train_loss"] < curves[0]["train_loss"]
    json.dumps(metrics)  # serialisable as metrics.json
    assert "# Image classifier" in result.model_card and "| discs |" in result.model_card


def test_progress_reaches_the_end_and_caches_features_once(probe):
    result, seen = probe
    stages = [p.stage for p in seen]
    assert stages.count("computing features") == 2  # one train + one val batch of 32, once
    first_head = stages.index("training head")
    assert "computing features" not in stages[first_head:]  # epochs reuse the cached features
    assert stages.count("training head") >= 10
    assert any(p.val_accuracy is not None for p in seen)
    assert_progress_counts_work_done(seen)
    assert stages.count("decoding images") == 32  # one unit per image
    # A linear probe's units are all single ones: every report that moved moved by one.
    moves = [b.step - a.step for a, b in zip(seen, seen[1:], strict=False)]
    assert set(moves) <= {0, 1} and seen[0].step == 1


def assert_progress_counts_work_done(seen: list[FinetuneProgress]) -> None:
    """Steps only grow, never pass the total; the total is planned up front and only ever
    trimmed (unreadable images, early stopping); the last report is the end."""
    assert seen
    assert all(p.step <= p.total for p in seen)
    steps, totals = [p.step for p in seen], [p.total for p in seen]
    assert steps == sorted(steps)
    assert totals == sorted(totals, reverse=True)
    assert seen[-1].step == seen[-1].total


def test_checkpoint_reload_gives_the_same_predictions(probe):
    result, _ = probe
    model = load_model(result.checkpoint)
    files = shape_files(16, seed=0)
    recorded = result.metrics["val_predictions"]
    tops = model.predict([files[p["name"]] for p in recorded], top_k=2)
    assert [t[0]["label"] for t in tops] == [p["predicted"] for p in recorded]
    again = load_model(result.checkpoint).predict([files[p["name"]] for p in recorded], top_k=2)
    assert again == tops  # deterministic
    assert all(abs(sum(x["probability"] for x in t) - 1) < 1e-3 for t in tops)
    assert model.classes == list(CLASSES) and model.info["backbone"] == "vgg19"


def test_unreadable_images_are_counted_not_fatal():
    result = _train(_dataset(broken=2), image_size=32, epochs=3, seed=1)
    assert result.metrics["dataset"]["unreadable"] == 2
    names = {u["name"] for u in result.metrics["dataset"]["unreadable_files"]}
    assert names == {"discs/000.png", "discs/002.png"}


def test_too_many_unreadable_images_fail_with_invalid_input():
    with pytest.raises(InvalidInput, match="could not be read"):
        _train(_dataset(per_class=8, broken=4), image_size=32, epochs=1, seed=0)


def test_cancel_stops_within_a_batch():
    calls = []

    def cancel_on_features(p: FinetuneProgress) -> None:
        calls.append(p.stage)
        if p.stage == "computing features":
            raise Canceled("cancel requested")

    with pytest.raises(Canceled):
        _train(_dataset(), cancel_on_features, image_size=32, seed=0)
    assert calls.count("computing features") == 1


@pytest.mark.parametrize("strategy", ["full", "gradual"])
def test_full_and_gradual_train_the_backbone(strategy):
    torch.set_num_threads(1)
    data = _dataset(per_class=10, seed=2)
    seen: list[FinetuneProgress] = []
    result = _train(
        data, seen.append, strategy=strategy, image_size=32, epochs=1, batch_size=8, seed=0
    )
    phases = [e["phase"] for e in result.metrics["epochs"]]
    assert phases[-1] == strategy and "head" in phases
    assert_progress_counts_work_done(seen)
    assert {"validating", "computing features"} <= {p.stage for p in seen}
    state = torch.load(__import__("io").BytesIO(result.checkpoint), weights_only=True)
    assert state["backbone_state"] is not None  # the trained backbone travels with the head
    model = load_model(result.checkpoint)
    files = shape_files(10, seed=2)
    recorded = result.metrics["val_predictions"]
    tops = model.predict([files[p["name"]] for p in recorded], top_k=1)
    assert [t[0]["label"] for t in tops] == [p["predicted"] for p in recorded]


def test_missing_torchvision_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsUnavailable, match=r"resnet18-[0-9a-f]+\.pth"):
        _train(_dataset(per_class=6), backbone="resnet18", image_size=32, epochs=1, seed=0)


def test_torchvision_backbone_from_the_hub_cache(tmp_path, monkeypatch):
    """A (randomly initialised) resnet18 file in the cache is used, with its own preprocessing."""
    from torchvision.models import get_model

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = backbones.torchvision_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(get_model("resnet18", weights=None).state_dict(), path)
    result = _train(_dataset(per_class=6), backbone="resnet18", image_size=32, epochs=2, seed=0)
    state = torch.load(__import__("io").BytesIO(result.checkpoint), weights_only=True)
    assert state["backbone"] == "resnet18" and state["preprocessing"]["channels"] == "RGB"
    assert state["backbone_weights"]["file"] == path.name
    assert len(load_model(result.checkpoint).predict([shape_files(1)["discs/000.png"]])[0]) == 2


def test_split_is_stratified_and_seeded():
    items = _dataset(per_class=10).train
    train, val = split(items, 0.2, seed=5)
    assert sorted(i.label for i in val) == [0, 0, 1, 1]
    assert [i.name for i in split(items, 0.2, seed=5)[1]] == [i.name for i in val]
    assert not {i.name for i in train} & {i.name for i in val}


def test_cli_runs_on_a_folder_and_an_archive(tmp_path, capsys):
    from worker.cli import main

    files = shape_files(6, seed=4)
    for name, data in files.items():
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(data)
    (tmp_path / "data.zip").write_bytes(make_zip(files))
    written = {"none": set(), "torchscript": {"model.torchscript.pt"}}
    for source, export in (("data", "none"), ("data.zip", "torchscript")):
        out = tmp_path / f"out-{source}"
        argv = ["finetune", str(tmp_path / source), "--image-size", "32", "--epochs", "3"]
        code = main([*argv, "--seed", "0", "--export", export, "-o", str(out)])
        assert code == 0
        made = {p.name for p in out.iterdir()}
        assert made == {"model.pt", "metrics.json", "model_card.md", *written[export]}
        report = json.loads((out / "metrics.json").read_text())["export"]
        assert set(report) == ({"torchscript"} if export == "torchscript" else set())
    # the exported copy is the job's: its parity with model.pt is measured and recorded
    assert report["torchscript"]["max_abs_diff"] < 1e-3 and report["torchscript"]["labels_agree"]
    err = capsys.readouterr().err
    assert "[####" in err and "accuracy" in err
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "ants").mkdir()
    assert main(["finetune", str(tmp_path / "one"), "--quiet"]) == 2
    assert "no images" in capsys.readouterr().err
