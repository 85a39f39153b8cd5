"""A linear probe ships a head refitted on train + val; its val metrics come from one that
was fitted on the training images only."""

from __future__ import annotations

import io

import pytest
import torch

from tests.finetune_data import CLASSES, shape_files
from worker.engines import datasets as ds
from worker.engines import probe
from worker.engines.datasets import ImageDataset, LabeledImage
from worker.engines.finetune import FinetuneConfig, FinetuneResult, fine_tune, load_model

IMAGE_SIZE = 32


def _items(files: dict[str, bytes]) -> list[LabeledImage]:
    return [LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in files.items()]


def _train(seed: int, val_split: float = 0.5, files: dict[str, bytes] | None = None):
    """The default probe (fp32: the same features on any CPU) on 12 shapes per class."""
    dataset = ImageDataset(list(CLASSES), _items(files or shape_files(12, seed=3)))
    config = FinetuneConfig.resolve(
        image_size=IMAGE_SIZE, seed=seed, val_split=val_split, precision="fp32"
    )
    return fine_tune(dataset, config)


def _head(result: FinetuneResult) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(result.checkpoint), weights_only=True)["head"]


@pytest.fixture(scope="module")
def runs() -> dict[str, FinetuneResult]:
    torch.set_num_threads(1)
    return {"a": _train(seed=1), "again": _train(seed=1), "b": _train(seed=2)}


def _features(result: FinetuneResult, names: list[str], files: dict[str, bytes]) -> torch.Tensor:
    """The shipped model's backbone features of ``names``, as the job computed them."""
    model = load_model(result.checkpoint)
    crops = torch.stack([model.crop(files[n]) for n in names]).float().div(255.0)
    with torch.inference_mode():
        return model.model.backbone(crops).float().clone()


def test_the_shipped_head_is_fitted_on_train_and_val(runs):
    """Refitting on the split's train + val features with the recorded λ gives the shipped
    weights; the train images alone give another head."""
    files = shape_files(12, seed=3)
    train, val = ds.split(_items(files), 0.5, seed=1)
    result = runs["a"]
    head = result.metrics["head"]
    assert head["refit_on"] == "train+val"
    assert head["refit_images"] == {"train": len(train), "val": len(val), "total": 24}
    assert len(val) == 12  # half of each class: the job's own split
    names = [it.name for it in train + val]
    feats = _features(result, names, files)
    labels = torch.tensor([it.label for it in train + val])
    shipped = _head(result)
    rounds = result.config.epochs
    on_all = probe.fit_logistic(
        probe.make_head(feats.shape[1], 2), feats, labels, head["l2"], rounds
    )
    n = len(train)
    on_train = probe.fit_logistic(
        probe.make_head(feats.shape[1], 2), feats[:n], labels[:n], head["l2"], rounds
    )
    for key, value in on_all.state_dict().items():
        assert torch.allclose(shipped[key], value, atol=1e-4), key
    assert not torch.allclose(shipped["0.mean"], on_train.state_dict()["0.mean"], atol=1e-4)


def test_the_shipped_model_knows_the_val_images_as_well_as_the_train_ones(runs):
    files = shape_files(12, seed=3)
    train, val = ds.split(_items(files), 0.5, seed=1)
    model = load_model(runs["a"].checkpoint)

    def accuracy(items: list[LabeledImage]) -> float:
        top = model.predict([it.data for it in items], top_k=1)
        return sum(
            t[0]["label"] == CLASSES[it.label] for t, it in zip(top, items, strict=True)
        ) / len(items)

    assert accuracy(val) == accuracy(train) == 1.0


def test_val_metrics_come_from_the_train_only_head(runs):
    metrics = runs["a"].metrics
    assert "training images only" in metrics["head"]["val_metrics_from"]
    assert metrics["head"]["l2"] in probe.L2_GRID
    assert metrics["head"]["folds"] == 5 and metrics["head"]["scores"]  # on 6 train per class
    assert metrics["config"]["weight_decay"] == metrics["head"]["l2"]  # the shipped λ
    assert metrics["dataset"]["val"] == {c: 6 for c in CLASSES}
    assert metrics["best_epoch"] == metrics["config"]["epochs"]  # the train-only fit's rounds
    assert "refitted on all 24 labelled images" in runs["a"].model_card


def test_same_seed_same_shipped_weights(runs):
    first, second = _head(runs["a"]), _head(runs["again"])
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert runs["a"].metrics["head"] == runs["again"].metrics["head"]


def test_two_seeds_ship_heads_that_agree(runs):
    """Other seeds hold out other images for validation, yet every shipped head saw all of
    them: on new shapes their labels agree."""
    fresh = list(shape_files(10, seed=11).values())
    a, b = (load_model(runs[k].checkpoint).predict(fresh, top_k=1) for k in ("a", "b"))
    assert [t[0]["label"] for t in a] == [t[0]["label"] for t in b]


def test_an_explicit_val_folder_is_refitted_on_too():
    torch.set_num_threads(1)
    train = _items(shape_files(8, seed=4))
    val = _items(shape_files(3, seed=5))
    val = [LabeledImage(f"val/{it.name}", it.label, it.data) for it in val]
    dataset = ImageDataset(list(CLASSES), train, val)
    config = FinetuneConfig.resolve(image_size=IMAGE_SIZE, seed=0, precision="fp32", epochs=5)
    result = fine_tune(dataset, config)
    assert result.metrics["head"]["refit_images"] == {"train": 16, "val": 6, "total": 22}
    assert result.metrics["dataset"]["val"] == {c: 3 for c in CLASSES}


def test_a_given_weight_decay_is_used_for_both_fits():
    torch.set_num_threads(1)
    dataset = ImageDataset(list(CLASSES), _items(shape_files(6, seed=0)))
    config = FinetuneConfig.resolve(image_size=IMAGE_SIZE, seed=0, epochs=3, weight_decay=0.3)
    head = fine_tune(dataset, config).metrics["head"]
    assert head["l2"] == 0.3
    assert "scores" not in head and head["refit_on"] == "train+val"
