"""Every resize in the engines is bounded before it allocates, and the fine-tune/predict
decoder checks the header's shape before it decodes a pixel.

The sizes asked for here would need terabytes: a refusal (not a MemoryError, not a
long wait) shows the check ran before the allocation. Bodies are garbage where it
matters, so a refusal that names the shape shows the header decided, not a decode.

A corrupt header is one unreadable image, whatever Pillow raises on it: the decoder says
ValueError, so fine-tune and predict list the image and carry on with the others.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from shared.settings import Settings
from tests.finetune_data import CLASSES, shape_files
from tests.image_shapes import CORRUPT_HEADERS, EXTREME_SHAPES, png_with_broken_body, tiled_tiff
from worker.engines import datasets as ds
from worker.engines import imaging, style_transfer
from worker.engines.errors import InvalidInput
from worker.engines.finetune import FineTunedModel
from worker.kinds.predict import predict_chunk

from .conftest import make_style, run_style

RATIO = Settings.max_aspect_ratio


def _budget() -> imaging.ImageLimits:
    return imaging.ImageLimits(max_pixels=500_000, max_aspect_ratio=RATIO)


def test_resize_refuses_an_output_over_its_budget_without_allocating():
    small = Image.new("RGB", (4, 4))
    with pytest.raises(InvalidInput, match="pixel budget"):
        imaging.resize(small, (1_000_000, 1_000_000), max_pixels=10_000)
    with pytest.raises(InvalidInput):
        imaging.resize(small, (0, 10), max_pixels=10_000)
    assert imaging.resize(small, (100, 100), max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("shape", EXTREME_SHAPES)
def test_covering_a_short_side_refuses_an_exploding_long_side(shape):
    with pytest.raises(InvalidInput, match="pixel budget"):
        imaging.cover_short_side(*shape, 292, max_pixels=40_000_000)


def test_covering_a_short_side_keeps_the_decoders_sizes():
    assert imaging.cover_short_side(640, 480, 256, max_pixels=10**6) == (341, 256)
    assert imaging.cover_short_side(30, 600, 55, max_pixels=10**6) == (55, 1100)
    with pytest.raises(InvalidInput):
        imaging.cover_short_side(30, 600, 55, max_pixels=55 * 1100 - 1)


@pytest.mark.parametrize("shape", EXTREME_SHAPES)
def test_the_decoder_refuses_an_extreme_header_before_decoding(shape):
    with pytest.raises(ValueError, match=f"1:{RATIO} aspect-ratio") as info:
        ds.decode(png_with_broken_body(*shape), 224)  # the settings' defaults
    assert "broken data" not in str(info.value)


def test_the_decoders_resize_is_capped_even_with_a_lax_ratio():
    """A ratio setting of 1:1000 still cannot make a 256 px short side allocate gigabytes."""
    lax = imaging.ImageLimits(max_pixels=10_000_000, max_aspect_ratio=1000)
    with pytest.raises(ValueError, match="pixel budget"):
        ds.decode(png_with_broken_body(50_000, 100), 224, lax)  # 256x128000 once resized
    with pytest.raises(ValueError, match="pixel limit"):
        ds.decode(png_with_broken_body(4000, 4000), 224, lax)  # the header's own pixels


def test_extreme_and_oversized_members_are_skipped_and_listed_like_unreadable_ones():
    files = shape_files(16)
    items = [ds.LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in files.items()]
    bad = {
        "discs/wide.png": png_with_broken_body(100_000, 2),
        "squares/tall.png": png_with_broken_body(2, 100_000),
        "discs/huge.png": png_with_broken_body(1000, 1000),
    }
    items += [ds.LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in bad.items()]
    dataset = ds.ImageDataset(list(CLASSES), items, limits=_budget())
    decoded = ds.decode_all(dataset, image_size=32, val_split=0.25, seed=0)
    reasons = {u["name"]: u["reason"] for u in decoded.unreadable}
    assert set(reasons) == set(bad)
    assert f"1:{RATIO} aspect-ratio" in reasons["discs/wide.png"]
    assert f"1:{RATIO} aspect-ratio" in reasons["squares/tall.png"]
    assert "500000 pixel limit" in reasons["discs/huge.png"]
    kept = decoded.train.names + decoded.val.names
    assert sorted(kept) == sorted(files)


def test_the_decoder_refuses_a_tiff_tile_far_larger_than_the_image():
    """libtiff allocates a whole declared tile: a 64x64 TIFF with one 26752x26752 tile cost
    2 GiB here. The header's tile size is checked with its shape; ordinary tiles decode."""
    with pytest.raises(ValueError, match="declares 4096x4096 tiles"):
        ds.decode(tiled_tiff(64, 64, 4096, b"not deflate data"), 224)
    assert ds.decode(tiled_tiff(64, 64, 256), 224).shape == (3, 256, 256)


@pytest.mark.parametrize("name", sorted(CORRUPT_HEADERS))
def test_a_corrupt_header_is_a_value_error_whatever_pillow_raised(name):
    """struct.error (EXIF) and TypeError (TIFF tags) used to escape decode's ValueError."""
    with pytest.raises(ValueError, match="corrupt"):
        ds.decode(CORRUPT_HEADERS[name](), 32)


def test_corrupt_headers_are_listed_as_unreadable_by_fine_tune_and_predict():
    """One such image failed a whole fine-tune or predict job ``internal``; now it is named
    among the unreadable ones and the others are still decoded and labelled."""
    files = shape_files(16)
    items = [ds.LabeledImage(n, CLASSES.index(n.split("/")[0]), d) for n, d in files.items()]
    bad = {f"discs/{name}": make() for name, make in CORRUPT_HEADERS.items()}
    items += [ds.LabeledImage(n, 0, d) for n, d in bad.items()]
    dataset = ds.ImageDataset(list(CLASSES), items)
    decoded = ds.decode_all(dataset, image_size=32, val_split=0.25, seed=0)
    assert {u["name"] for u in decoded.unreadable} == set(bad)
    assert sorted(decoded.train.names + decoded.val.names) == sorted(files)

    torch.manual_seed(0)
    head = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, len(CLASSES))
    )
    model = FineTunedModel(head, list(CLASSES), 32, "cpu", "fp32", {})
    chunk = [("good.png", files["discs/000.png"]), *bad.items()]
    rows = predict_chunk(model, chunk, 2, ds.DEFAULT_LIMITS)
    assert [row["name"] for row in rows] == [name for name, _ in chunk]
    assert len(rows[0]["top"]) == 2 and "error" not in rows[0]
    assert all(row["top"] == [] and "corrupt" in row["error"] for row in rows[1:])


def test_a_style_is_lengthened_for_vgg_but_never_without_bound():
    assert style_transfer._style_dims((72, 56), 48) == imaging.fit_long_side(72, 56, 48)
    dims = style_transfer._style_dims((400, 20), 64)  # 1:20 at a small side: lengthened
    assert min(dims) >= 16 and max(dims) <= 400
    for shape in EXTREME_SHAPES:
        with pytest.raises(InvalidInput, match="too elongated"):
            style_transfer._style_dims(shape, 512)


def test_stylize_refuses_extreme_images_instead_of_allocating(content):
    with pytest.raises(InvalidInput, match="crop the content"):
        run_style(Image.new("RGB", (100_000, 2)), [make_style()], size=64, device="cpu")
    with pytest.raises(InvalidInput, match="too elongated"):
        run_style(content, [Image.new("RGB", (2, 100_000))], size=64, iterations=2, device="cpu")
