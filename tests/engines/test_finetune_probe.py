"""The linear probe's parts: pooled feature layers, the cross-validated head, ``auto``."""

from __future__ import annotations

import io

import pytest
import torch

from tests.finetune_data import CLASSES, shape_files
from worker.engines import auto, probe
from worker.engines.backbones import (
    LEGACY_VGG_FEATURE_LAYERS,
    VGG_FEATURE_LAYERS,
    build_backbone,
)
from worker.engines.datasets import ImageDataset, LabeledImage
from worker.engines.errors import InvalidInput
from worker.engines.finetune import FinetuneConfig, fine_tune, load_model


def _dataset(per_class: int = 10, seed: int = 0) -> ImageDataset:
    files = shape_files(per_class, seed=seed)
    items = [LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in files.items()]
    return ImageDataset(list(CLASSES), items)


def test_vgg_features_concatenate_each_tapped_layer_and_pooling():
    images = torch.rand(2, 3, 32, 32)
    layers = ("relu4_4:avg", "relu4_4:max", "relu5_4:avg", "relu3_4:max")
    backbone = build_backbone("vgg19", pretrained=False, layers=layers).eval()
    with torch.no_grad():
        out = backbone(images)
    assert out.shape == (2, 512 + 512 + 512 + 256) == (2, backbone.feature_dim)
    assert backbone.feature_layers == layers
    default = build_backbone("vgg19", pretrained=False)
    assert default.feature_dim == 512 and default(images).shape == (2, 512)
    assert default.feature_layers == VGG_FEATURE_LAYERS
    assert (
        build_backbone("vgg19", pretrained=False, layers=LEGACY_VGG_FEATURE_LAYERS).feature_dim
        == 1024
    )
    for bad in ("relu9_9:avg", "relu5_4:avg:l1", "relu5_4"):
        with pytest.raises(InvalidInput):
            build_backbone("vgg19", pretrained=False, layers=(bad,))


def test_default_features_are_unit_length_whatever_the_contrast():
    """The default taps relu5_4, average-pooled then L2-normalised (the k-fold winner): an
    image's features keep their direction and lose its overall activation strength."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 64, 64, generator=gen)
    images = torch.cat([images, 0.5 + 0.25 * (images - 0.5)])  # the same, at half contrast
    normalised = build_backbone("vgg19").eval()
    raw = build_backbone("vgg19", layers=("relu5_4:avg",)).eval()
    with torch.no_grad():
        feats, plain = normalised(images), raw(images)
    assert torch.allclose(feats.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.allclose(feats, torch.nn.functional.normalize(plain, dim=1), atol=1e-5)
    assert not torch.allclose(plain.norm(dim=1), torch.ones(6), atol=0.1)
    low, high = plain.norm(dim=1)[3:], plain.norm(dim=1)[:3]
    assert (low < 0.9 * high).all()  # contrast moves the raw norm, not the direction used


def test_folds_are_stratified_disjoint_and_seeded():
    labels = torch.tensor([0] * 12 + [1] * 8)
    folds = probe.stratified_folds(labels, 4, seed=1)
    assert sorted(torch.cat(folds).tolist()) == list(range(20))
    assert [int((labels[f] == 1).sum()) for f in folds] == [2, 2, 2, 2]
    again = probe.stratified_folds(labels, 4, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(folds, again, strict=True))


def test_cv_picks_a_value_of_its_grid_and_the_refit_separates():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 20)
    feats = torch.randn(40, 64, generator=gen)
    feats[:, :4] += 1.5 * labels[:, None]  # a few informative features among noise
    choice = probe.choose_l2(feats, labels, 2, seed=0, rounds=5)
    assert choice.l2 in probe.L2_GRID and choice.folds == 5
    assert [s["l2"] for s in choice.scores] == list(probe.L2_GRID)
    best = min(s["cv_loss"] for s in choice.scores)
    assert next(s for s in choice.scores if s["l2"] == choice.l2)["cv_loss"] == best
    head = probe.fit_logistic(probe.make_head(64, 2), feats, labels, choice.l2, rounds=10)
    with torch.no_grad():
        assert (head(feats).argmax(1) == labels).float().mean() > 0.9


def test_auto_chooses_by_size_and_budget():
    small = auto.choose(200, 2, 224, "cpu", None)
    assert small.strategy == "linear_probe" and "per class" in small.reason
    assert small.feature_layers == VGG_FEATURE_LAYERS and "L2-normalised" in small.layers_reason
    assert small.head["l2"] == "cross-validated" and small.head["grid"] == list(probe.L2_GRID)
    big = auto.choose(20000, 2, 224, "cuda", 86400)
    assert big.strategy == "full"
    tight = auto.choose(20000, 2, 224, "cpu", 60)
    assert tight.strategy == "linear_probe" and "budget" in tight.reason


def test_auto_records_how_the_head_is_regularised_and_why():
    folds = auto.choose(40, 2, 224, "cpu", None, smallest_class=3)
    assert folds.head["folds"] == 3 and "3 stratified folds" in folds.head["reason"]
    single = auto.choose(3, 2, 224, "cpu", None, smallest_class=1)
    assert single.head["l2"] in probe.L2_GRID and "one training image" in single.head["reason"]
    given = auto.choose(200, 2, 224, "cpu", None, weight_decay=0.5)
    assert given.head == {"l2": 0.5, "reason": "weight_decay given"}
    resnet = auto.choose(200, 2, 224, "cpu", None, backbone="resnet18")
    assert resnet.feature_layers is None and "one feature layer" in resnet.layers_reason
    assert resnet.record(60)["feature_layers"] == []


@pytest.fixture(scope="module")
def auto_run():
    torch.set_num_threads(1)
    config = FinetuneConfig.resolve(strategy="auto", max_seconds=60, image_size=32, seed=4)
    assert config.epochs is None  # auto's defaults wait for the dataset
    return fine_tune(_dataset(), config)


def test_auto_records_its_choice_the_reason_and_the_cv(auto_run):
    metrics = auto_run.metrics
    assert metrics["auto"]["strategy"] == "linear_probe" == metrics["config"]["strategy"]
    assert metrics["auto"]["reason"] and metrics["auto"]["max_seconds"] == 60
    assert metrics["auto"]["feature_layers"] == list(VGG_FEATURE_LAYERS)
    assert metrics["auto"]["feature_layers_reason"]
    assert metrics["auto"]["head"]["folds"] == metrics["head"]["folds"] == 5  # 8 per class
    assert metrics["config"]["epochs"] == 40  # the chosen strategy's defaults
    assert metrics["head"]["l2"] in probe.L2_GRID and metrics["head"]["scores"]
    assert metrics["config"]["weight_decay"] == metrics["head"]["l2"]  # the λ used
    assert metrics["best_epoch"] == 40  # the refit's last round, not a validation pick


def test_same_seed_same_head_and_the_layers_travel_in_the_checkpoint(auto_run):
    again = fine_tune(
        _dataset(),
        FinetuneConfig.resolve(strategy="auto", max_seconds=60, image_size=32, seed=4),
    )
    assert again.metrics["accuracy"] == auto_run.metrics["accuracy"]
    assert again.metrics["head"] == auto_run.metrics["head"]
    first, second = (
        torch.load(io.BytesIO(r.checkpoint), weights_only=True) for r in (auto_run, again)
    )
    assert all(torch.equal(first["head"][k], second["head"][k]) for k in first["head"])
    assert first["feature_layers"] == list(
        load_model(auto_run.checkpoint).model.backbone.feature_layers
    )


def test_checkpoints_without_feature_layers_load_the_old_features(auto_run):
    state = torch.load(io.BytesIO(auto_run.checkpoint), weights_only=True)
    del state["feature_layers"]
    state["head"] = probe.make_head(1024, 2).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    model = load_model(buffer.getvalue())
    assert model.model.backbone.feature_dim == 1024
    assert len(model.predict([shape_files(1)["discs/000.png"]])[0]) == 2


def test_checkpoints_keep_the_features_their_head_was_trained_on(auto_run):
    """A head fitted on un-normalised relu5_4 (the previous default) still gets those."""
    state = torch.load(io.BytesIO(auto_run.checkpoint), weights_only=True)
    assert state["feature_layers"] == list(VGG_FEATURE_LAYERS)
    state["feature_layers"] = ["relu5_4:avg"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    old = load_model(buffer.getvalue()).model.backbone
    assert old.feature_layers == ("relu5_4:avg",)
    with torch.no_grad():
        assert not torch.allclose(old(torch.rand(1, 3, 32, 32)).norm(), torch.tensor(1.0))


def test_a_given_weight_decay_skips_the_cv():
    result = fine_tune(
        _dataset(6), FinetuneConfig.resolve(image_size=32, seed=0, epochs=3, weight_decay=0.5)
    )
    assert result.metrics["head"]["l2"] == 0.5 and "scores" not in result.metrics["head"]
