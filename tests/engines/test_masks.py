"""Region masks with the real engine: snapping, per-region Gram targets, seamless borders
and ``keep`` regions that stay the content."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from worker.engines import imaging, masks
from worker.engines.errors import InvalidInput
from worker.engines.losses import ALL_LAYERS, DEFAULT_LAYERS, gram, make_targets, style_error
from worker.engines.params import StyleParams
from worker.engines.style_transfer import stylize
from worker.engines.weights import load_vgg19

from .conftest import make_content, make_style

RED, BLUE = (255, 0, 0), (0, 0, 255)


def halves(size: tuple[int, int], left=RED, right=BLUE, soft: bool = False) -> Image.Image:
    """A mask with ``left`` on the left half and ``right`` on the right, optionally
    anti-aliased (a blurred edge of in-between colours) as paint programs draw it."""
    mask = Image.new("RGB", size, left)
    mask.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return mask.filter(ImageFilter.GaussianBlur(2)) if soft else mask


def stylize_masked(content, styles, mask, mapping, **overrides):
    params = StyleParams.resolve(
        len(styles), masks=1, mask_styles=mapping, device="cpu", seed=0, **overrides
    )
    return stylize(content, styles, params, mask=mask)


def test_anti_aliased_edges_and_noise_snap_to_the_listed_colours():
    mask = np.asarray(halves((64, 48), soft=True)).astype(np.int32)
    noise = np.random.default_rng(0).integers(-40, 40, mask.shape)
    noisy = np.clip(mask + noise, 0, 255).astype(np.uint8)
    labels = masks.snap_colours(noisy, ["red", "blue"])
    names = list(masks.MASK_COLOURS)
    assert set(np.unique(labels)) == {names.index("red"), names.index("blue")}
    assert (labels[:, :28] == names.index("red")).all()
    assert (labels[:, 36:] == names.index("blue")).all()


def test_a_mask_of_another_size_is_resized_and_colours_of_one_target_share_a_region():
    mask = Image.new("RGB", (30, 10), RED)
    mask.paste((0, 255, 0), (10, 0, 20, 10))
    mask.paste(BLUE, (20, 0, 30, 10))
    plan = masks.plan_regions(mask, (64, 48), ["red:0", "green:0"])
    assert tuple(plan.labels.shape) == (48, 64)
    assert plan.targets == (0, None)  # red and green paint with style 0; blue: the blend
    assert plan.colours == (("red", "green"), ("blue",))
    assert plan.labels[:, :40].eq(0).all() and plan.labels[:, 45:].eq(1).all()


def test_region_maps_are_soft_at_borders_and_sum_to_one():
    plan = masks.plan_regions(halves((64, 48)), (64, 48), ["red:keep", "blue:0"])
    maps = masks.scale_maps(plan, (64, 48))
    assert torch.allclose(maps.sum(0), torch.ones(1, 48, 64), atol=1e-5)
    row = maps[0, 0, 24]
    assert row[0] == pytest.approx(1) and row[-1] == pytest.approx(0, abs=1e-6)
    assert 0.2 < float(row[31]) < 0.8  # a ramp across the border, not a step
    assert bool((row[1:] <= row[:-1] + 1e-6).all())


def test_one_region_covering_everything_is_the_plain_style_loss():
    net = load_vgg19()
    content = imaging.to_tensor(make_content())
    style = imaging.to_tensor(make_style())
    with torch.no_grad():
        feats = net(content, ALL_LAYERS)
        style_feats = net(style, ALL_LAYERS)
    grams = {layer: gram(style_feats[layer]) for layer in DEFAULT_LAYERS.style}
    plan = masks.plan_regions(Image.new("RGB", (8, 8), RED), (64, 48), ["red:0"])
    maps = masks.scale_maps(plan, (64, 48))
    regions = masks.region_targets(plan, maps, {0: grams}, grams, feats, DEFAULT_LAYERS)
    plain = make_targets(feats, grams)
    expected = style_error(feats, grams, plain.gram_norms)
    assert float(regions.error(feats)) == pytest.approx(float(expected), rel=1e-4)


def test_a_kept_half_stays_the_content_while_the_other_half_is_stylised():
    content, style = make_content(48, 36), make_style()
    result = stylize_masked(
        content,
        [style],
        halves((48, 36)),
        ["red:keep", "blue:0"],
        size=48,
        iterations=10,
        multiscale=False,
        strength=0.9,
    )
    out, original = np.asarray(result.image, float), np.asarray(content, float)
    kept = np.abs(out[:, :19] - original[:, :19])  # away from the feathered border
    styled = np.abs(out[:, 29:] - original[:, 29:])
    assert kept.max() <= 2, kept.max()
    assert styled.mean() > 15, styled.mean()
    regions = {r["target"]: r for r in result.metrics["regions"]}
    assert regions["keep"]["share"] == pytest.approx(0.5, abs=0.02)


def test_each_half_takes_its_own_style():
    content = make_content(48, 36)
    red, green, blue = make_style(seed=1).transpose(Image.Transpose.ROTATE_90).split()
    striped, other = make_style(), Image.merge("RGB", (blue, red, green))  # new palette too
    result = stylize_masked(
        content,
        [striped, other],
        halves((48, 36)),
        ["red:0", "blue:1"],
        size=48,
        iterations=10,
        multiscale=False,
        strength=0.9,
    )
    net = load_vgg19()

    def distance(crop: Image.Image, style: Image.Image) -> float:
        with torch.no_grad():
            fo = net(imaging.to_tensor(crop), ALL_LAYERS)
            fs = net(imaging.to_tensor(style), ALL_LAYERS)
        parts = [
            (gram(fo[k]) - gram(fs[k])).norm() / gram(fs[k]).norm()
            for k in ("relu1_1", "relu2_1", "relu3_1")
        ]
        return float(sum(parts) / len(parts))

    left, right = result.image.crop((0, 0, 21, 36)), result.image.crop((27, 0, 48, 36))
    assert distance(left, striped) < distance(left, other) - 0.02
    assert distance(right, other) < distance(right, striped) - 0.02


@pytest.mark.parametrize(
    ("mapping", "mask", "field"),
    [
        (None, halves((64, 48)), "mask"),  # a mask says nothing without a mapping
        (["red:keep"], None, "mask_styles"),  # a mapping needs its mask
        (["red:1"], halves((64, 48)), "mask_styles"),  # one style image: index 0 only
        (["red:0", "red:keep"], halves((64, 48)), "mask_styles"),
    ],
)
def test_the_engine_checks_mask_and_mapping_together(mapping, mask, field):
    params = StyleParams.resolve(1, mask_styles=mapping, device="cpu", seed=0, size=32)
    with pytest.raises(InvalidInput) as info:
        stylize(make_content(), [make_style()], params, mask=mask)
    assert info.value.param == field


def test_the_local_cli_takes_a_mask(tmp_path):
    from worker import stylize_cli

    paths = {name: tmp_path / f"{name}.png" for name in ("content", "style", "mask")}
    make_content().save(paths["content"])
    make_style().save(paths["style"])
    halves((64, 48)).save(paths["mask"])
    out = tmp_path / "out.png"
    common = [str(paths["content"]), str(paths["style"]), "-o", str(out), "--quiet"]
    common += ["--size", "32", "--iterations", "2", "--seed", "0", "--device", "cpu"]
    assert (
        stylize_cli.main([*common, "--mask", str(paths["mask"]), "--mask-styles", "red:keep"]) == 0
    )
    regions = json.loads(out.with_suffix(".json").read_text())["regions"]
    assert [r["target"] for r in regions] == ["keep", "blend"]
    assert stylize_cli.main([*common, "--mask", str(paths["mask"])]) != 0  # no mapping
