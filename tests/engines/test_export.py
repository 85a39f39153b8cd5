"""Exported models: ONNX and TorchScript give PyTorch's logits, labels and a model card."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from tests.finetune_data import CLASSES, shape_files
from worker.engines import export
from worker.engines.datasets import ImageDataset, LabeledImage
from worker.engines.errors import Canceled
from worker.engines.finetune import FinetuneConfig, fine_tune, load_model
from worker.engines.finetune_report import model_card
from worker.kinds.fine_tune import export_formats, export_model

TOLERANCE = 1e-4  # fp32 logits, same weights: only kernel order differs


@pytest.fixture(scope="module")
def trained():
    """A linear probe on drawn shapes, its reloaded model, a few crops and its export."""
    torch.set_num_threads(1)
    files = shape_files(8, seed=5)
    items = [LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in files.items()]
    dataset = ImageDataset(list(CLASSES), items)
    result = fine_tune(dataset, FinetuneConfig.resolve(image_size=48, seed=2, epochs=3))
    model = load_model(result.checkpoint)
    crops = [model.crop(data) for data in files.values()]
    exported = export_model(result.checkpoint, dataset, dataset.limits)
    return result, model, crops, exported


def test_onnx_logits_match_pytorch(trained):
    _, model, crops, exported = trained
    report = exported.report["onnx"]
    assert report["file"] == export.ONNX_FILE and report["labels_agree"] is True
    assert report["max_abs_diff"] < TOLERANCE
    session = export.onnx_session(exported.files[export.ONNX_FILE])
    batch = torch.stack(crops).float() / 255.0  # 16 images: not the exported batch size
    with torch.no_grad():
        want = export.fp32_copy(model.model)(batch)
    got = export.onnx_logits(session, batch)
    assert got.shape == (len(crops), len(CLASSES))
    assert float((got - want).abs().max()) < TOLERANCE


def test_torchscript_reload_gives_the_same_logits(trained):
    _, model, crops, exported = trained
    report = exported.report["torchscript"]
    assert report["file"] == export.TORCHSCRIPT_FILE and report["max_abs_diff"] < TOLERANCE
    reloaded = export.load_torchscript(exported.files[export.TORCHSCRIPT_FILE])
    batch = torch.stack(crops[:5]).float() / 255.0
    with torch.no_grad():
        want, got = export.fp32_copy(model.model)(batch), reloaded(batch)
    assert float((got - want).abs().max()) < TOLERANCE


def test_onnx_predictor_gives_torchs_labels(trained):
    _, model, crops, exported = trained
    session = export.onnx_session(exported.files[export.ONNX_FILE])
    onnx = export.OnnxPredictor(session, model.classes, model.crop)
    torch_top = model.predict_crops(crops, top_k=2)
    onnx_top = onnx.predict_crops(crops, top_k=2)
    assert [t[0]["label"] for t in onnx_top] == [t[0]["label"] for t in torch_top]
    # predict's torch runtime keeps bf16 where the CPU is fast at it; ONNX is fp32
    tolerance = 1e-4 if model.precision == "fp32" else 0.02
    for a, b in zip(onnx_top, torch_top, strict=True):
        assert abs(a[0]["probability"] - b[0]["probability"]) < tolerance


def test_model_card_shows_how_to_load_each_format(trained):
    result, _, _, exported = trained
    card = model_card(
        config=asdict(result.config), metrics={**result.metrics, "export": exported.report}
    )
    assert 'load_model(open("model.pt", "rb").read())' in card
    assert 'ort.InferenceSession("model.onnx")' in card
    assert 'torch.jit.load("model.torchscript.pt")' in card
    assert "(N, 3, 48, 48)" in card


def test_a_failed_format_is_recorded_and_the_other_kept(trained, monkeypatch):
    result, model, crops, _ = trained

    def broken(module, sample):
        raise RuntimeError("no exporter for this network")

    monkeypatch.setattr(export, "export_onnx", broken)
    outcome = export.export_all(model.model, export.sample_batch(crops, 48))
    assert list(outcome.files) == [export.TORCHSCRIPT_FILE]
    assert "no exporter for this network" in outcome.report["onnx"]["error"]
    card = model_card(
        config=asdict(result.config), metrics={**result.metrics, "export": outcome.report}
    )
    assert "`model.onnx` could not be exported: RuntimeError" in card
    assert "InferenceSession" not in card and "torch.jit.load" in card


def test_an_unloadable_checkpoint_exports_nothing_but_says_why():
    dataset = ImageDataset(list(CLASSES), [])
    outcome = export_model(b"not a checkpoint", dataset, dataset.limits)
    assert outcome.files == {}
    assert set(outcome.report) == {"onnx", "torchscript"}
    assert all("model.pt cannot be loaded" in r["error"] for r in outcome.report.values())


def test_a_cancel_during_export_stops_it(trained):
    result, _, _, _ = trained
    dataset = ImageDataset(list(CLASSES), [])
    steps = []

    def cancel(fmt: str) -> None:
        steps.append(fmt)
        raise Canceled("canceled by the user")

    with pytest.raises(Canceled):
        export_model(result.checkpoint, dataset, dataset.limits, cancel)
    assert steps == ["onnx"]


@pytest.mark.parametrize(
    ("choice", "files"),
    [
        ("all", {export.ONNX_FILE, export.TORCHSCRIPT_FILE}),
        ("onnx", {export.ONNX_FILE}),
        ("torchscript", {export.TORCHSCRIPT_FILE}),
        ("none", set()),
    ],
)
def test_the_export_param_picks_the_formats(trained, choice, files):
    result, _, _, _ = trained
    files_data = shape_files(2, seed=6)
    items = [LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in files_data.items()]
    dataset = ImageDataset(list(CLASSES), items)
    steps: list[str] = []
    outcome = export_model(
        result.checkpoint, dataset, dataset.limits, steps.append, export_formats(choice)
    )
    assert set(outcome.files) == files and steps == list(outcome.report)
    assert all("error" not in entry for entry in outcome.report.values())
    card = model_card(
        config=asdict(result.config), metrics={**result.metrics, "export": outcome.report}
    )
    assert ("InferenceSession" in card) == (export.ONNX_FILE in files)
    assert ("torch.jit.load" in card) == (export.TORCHSCRIPT_FILE in files)


def test_the_spec_offers_exactly_the_engines_formats():
    """shared/ cannot import the engine: this ties the spec's choices to its formats."""
    from shared.kinds.fine_tune import EXPORTS

    assert EXPORTS == ("all", *export.FORMATS, "none")
