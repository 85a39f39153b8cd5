"""Faces survive: detection on a real portrait, a heavier content loss inside faces and the
protect mask, and nothing changed for runs that protect nothing.

The portrait is tests/data/astronaut_96.jpg (public domain, see tests/data/README.md).
Face-region distances are the judge's content distance restricted to the face: the
relu4_2 error of the output against the content inside the soft face map, over the
content's own norm there, read with the engine's VGG19 (original weights).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from worker.engines import faces, imaging
from worker.engines.batch_style import BatchItem, batch_key, stylize_batch
from worker.engines.errors import InvalidInput
from worker.engines.losses import LayerChoice, loss_terms, make_targets
from worker.engines.style_transfer import StyleParams, StyleResult, stylize
from worker.engines.weights import load_vgg19

from .conftest import make_content, make_style

PORTRAIT = Path(__file__).resolve().parents[1] / "data" / "astronaut_96.jpg"
SIZE, STEPS, SEED = 96, 16, 3


def _portrait() -> Image.Image:
    with Image.open(PORTRAIT) as image:
        return image.convert("RGB")


def _run(content: Image.Image, protect: Image.Image | None = None, **overrides) -> StyleResult:
    values = {"size": SIZE, "iterations": STEPS, "seed": SEED, "device": "cpu", **overrides}
    params = StyleParams.resolve(1, **values)
    return stylize(content, [make_style()], params, precision="fp32", protect=protect)


def _region_distance(output: Image.Image, content: Image.Image, area: torch.Tensor) -> float:
    """relu4_2 distance of ``output`` to ``content`` inside ``area`` ((1, 1, H, W), 0–1)."""
    net = load_vgg19("original", "max", "cpu")
    reference = imaging.resize(content, output.size, max_pixels=max(output.size) ** 2)
    with torch.no_grad():
        out = net(imaging.to_tensor(output), frozenset({"relu4_2"}))["relu4_2"]
        ref = net(imaging.to_tensor(reference), frozenset({"relu4_2"}))["relu4_2"]
    weight = torch.nn.functional.adaptive_avg_pool2d(area, out.shape[-2:])
    return float(((out - ref).pow(2) * weight).sum().sqrt() / (ref.pow(2) * weight).sum().sqrt())


@pytest.fixture(scope="module")
def portrait_runs() -> dict[str, StyleResult]:
    """The portrait with faces protected, unprotected, and protected by a mask only."""
    portrait = _portrait()
    on = _run(portrait)
    box = on.metrics["faces"]["boxes"][0]
    mask = Image.new("L", (SIZE, SIZE), 0)
    x, y, w, h = box
    ImageDraw.Draw(mask).ellipse((x - w // 4, y - h // 4, x + w + w // 4, y + h + h // 4), 255)
    return {
        "on": on,
        "off": _run(portrait, protect_faces=False),
        "mask": _run(portrait, protect=mask, protect_faces=False),
    }


def test_the_detector_finds_the_one_face_where_it_is_at_any_output_size():
    portrait = _portrait()
    [(x, y, w, h)] = faces.detect_faces(portrait, (96, 96))
    assert 35 <= x + w / 2 <= 50 and 12 <= y + h / 2 <= 30 and 12 <= w <= 30  # her face
    [double] = faces.detect_faces(portrait, (192, 192))  # same search, output pixels
    assert all(abs(a - 2 * b) <= 1 for a, b in zip(double, (x, y, w, h), strict=True))
    assert faces.detect_faces(portrait, (96, 96)) == [(x, y, w, h)]  # deterministic
    assert faces.detect_faces(make_content(), (64, 48)) == []  # gradients and a disc


def test_the_face_map_is_one_inside_zero_far_away_and_soft_between():
    area = faces.face_map([(20, 20, 16, 16)], (64, 64))[0, 0]
    assert area[28, 28] == 1 and area[0, 0] == 0 and area[63, 63] == 0
    row = area[28]
    assert ((row > 0.05) & (row < 0.95)).sum() >= 4  # a ramp, not an edge
    assert float(area.max()) <= 1


def test_protecting_faces_keeps_the_face_closer_to_the_content(portrait_runs):
    portrait = _portrait()
    area = faces.face_map(portrait_runs["on"].metrics["faces"]["boxes"], (SIZE, SIZE))
    on = _region_distance(portrait_runs["on"].image, portrait, area)
    off = _region_distance(portrait_runs["off"].image, portrait, area)
    assert on < 0.9 * off, (on, off)
    metrics = portrait_runs["on"].metrics
    assert metrics["faces"]["detector"] == faces.DETECTOR
    share = metrics["protect"]["face_share"]
    assert 0 < share < 1 and "mask_factor" not in metrics["protect"]
    assert metrics["protect"]["face_factor"] == pytest.approx(faces.face_factor(share), rel=1e-3)
    assert metrics["params"]["protect_faces"] is True and metrics["losses"]["protect"] > 0
    assert "faces" not in portrait_runs["off"].metrics  # not looked for


def test_the_face_factor_is_full_for_small_faces_and_budgeted_for_close_ups():
    small = faces.FACE_BUDGET / (faces.PROTECT_FACTOR - 1) / 2
    assert faces.face_factor(small) == faces.PROTECT_FACTOR
    assert faces.face_factor(0.0) == faces.PROTECT_FACTOR
    for share in (0.2, 0.44, 0.9):  # a close-up: the extra weight over the picture is capped
        factor = faces.face_factor(share)
        assert 1 < factor < faces.PROTECT_FACTOR
        assert (factor - 1) * share == pytest.approx(faces.FACE_BUDGET)
    assert faces.face_factor(0.9) < faces.face_factor(0.44) < faces.face_factor(0.2)


def test_a_close_up_face_is_protected_with_the_budgeted_factor():
    """The portrait cropped to its face: the face fills much of the picture, gets the
    smaller factor, and the weight map carries it (mean extra weight = the budget)."""
    portrait = _portrait()
    [(x, y, w, h)] = faces.detect_faces(portrait, portrait.size)
    pad = w // 3
    close_up = portrait.crop((x - pad, y - pad, x + w + pad, y + h + pad)).resize((96, 96))
    protection = faces.plan_protection(close_up, (96, 96), faces=True)
    assert len(protection.boxes) == 1, protection.boxes
    assert protection.face_share is not None and protection.face_share > 0.3
    assert protection.face_factor == faces.face_factor(protection.face_share)
    assert protection.face_factor < faces.PROTECT_FACTOR
    assert float(protection.extra.mean()) == pytest.approx(faces.FACE_BUDGET, rel=1e-5)
    assert protection.describe()["protect"]["face_factor"] < faces.PROTECT_FACTOR


def test_a_protect_mask_keeps_its_area_closer_to_the_content(portrait_runs):
    portrait = _portrait()
    area = faces.face_map(portrait_runs["on"].metrics["faces"]["boxes"], (SIZE, SIZE))
    masked = _region_distance(portrait_runs["mask"].image, portrait, area)
    off = _region_distance(portrait_runs["off"].image, portrait, area)
    assert masked < 0.9 * off, (masked, off)
    assert "faces" not in portrait_runs["mask"].metrics
    assert 0.02 < portrait_runs["mask"].metrics["protect"]["mask_share"] < 0.3
    assert portrait_runs["mask"].metrics["protect"]["mask_factor"] == faces.PROTECT_FACTOR


def test_no_face_found_or_protection_off_runs_exactly_the_unprotected_path(monkeypatch):
    content = make_content()
    searched = _run(content, size=48, iterations=6)
    assert searched.metrics["faces"] == {"detector": faces.DETECTOR, "boxes": []}
    assert "protect" not in searched.metrics and "protect" not in searched.metrics["losses"]

    def no_search(*args, **kwargs):
        raise AssertionError("faces were looked for")

    monkeypatch.setattr(faces, "detect_faces", no_search)
    off = _run(content, size=48, iterations=6, protect_faces=False)
    assert off.image.tobytes() == searched.image.tobytes()  # bit for bit
    assert off.metrics["losses"] == searched.metrics["losses"]
    assert "faces" not in off.metrics
    recoloured = _run(content, color_only=True)  # color_only: no search (no_search above)
    assert "faces" not in recoloured.metrics


def test_the_protect_term_is_the_content_error_weighted_by_the_extra_map():
    torch.manual_seed(0)
    features = {"relu4_2": torch.rand(1, 4, 6, 6)}
    content = {"relu4_2": torch.rand(1, 4, 6, 6)}
    grams = {"relu1_1": torch.eye(4)}
    features["relu1_1"] = content["relu1_1"] = torch.rand(1, 4, 6, 6)
    image = torch.rand(1, 3, 24, 24)
    layers = LayerChoice("relu4_2", ("relu1_1",), (1.0,))
    plain = loss_terms(features, image, make_targets(content, grams, layers))
    extra = torch.zeros(1, 1, 6, 6)
    extra[..., :3, :] = 7.0  # the top half weighs 8 times
    weighted = loss_terms(features, image, make_targets(content, grams, layers, protect=extra))
    assert plain.protect is None and torch.equal(plain.content, weighted.content)
    squared = (features["relu4_2"] - content["relu4_2"]).pow(2)
    top = squared[..., :3, :].sum() / content["relu4_2"].pow(2).sum()
    assert torch.allclose(weighted.protect, 7 * top)


def test_color_only_takes_no_protect_mask():
    with pytest.raises(InvalidInput) as caught:
        _run(make_content(), protect=Image.new("L", (8, 8), 255), color_only=True)
    assert caught.value.param == "protect"


def test_batches_key_on_face_protection_and_record_each_jobs_faces():
    portrait = _portrait()
    style = make_style()
    values = {"size": 48, "iterations": 4, "device": "cpu"}
    on = [StyleParams.resolve(1, seed=s, **values) for s in (1, 2)]
    off = StyleParams.resolve(1, seed=3, protect_faces=False, **values)
    assert batch_key(portrait, [style], on[0]) == batch_key(portrait, [style], on[1])
    assert batch_key(portrait, [style], on[0]) != batch_key(portrait, [style], off)
    mask = Image.new("L", (8, 8), 255)
    items = [BatchItem(portrait, [style], p) for p in on]
    items.append(BatchItem(portrait, [style], on[0], protect=mask))  # a mask: runs alone
    outcomes = stylize_batch(items, precision="fp32")
    assert all(isinstance(o, StyleResult) for o in outcomes), outcomes
    batched, alone = outcomes[:2], outcomes[2]
    assert all(o.metrics["batch_size"] == 2 for o in batched)
    assert "batch_size" not in alone.metrics and "mask_share" in alone.metrics["protect"]
    assert all(len(o.metrics["faces"]["boxes"]) == 1 for o in outcomes)
    assert all(o.metrics["losses"]["protect"] > 0 for o in outcomes)
