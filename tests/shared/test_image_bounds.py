"""The upload check reads headers only and bounds the aspect ratio; the worker's decode
checks the same bounds before it decodes, and finds truncated or corrupt data."""

from __future__ import annotations

import pytest

from shared.errors import InputError
from shared.images import inspect_image, load_rgb
from shared.settings import Settings
from tests.image_shapes import EXTREME_SHAPES, png, png_with_broken_body, truncated_png

RATIO = Settings.max_aspect_ratio
LIMITS = {"max_bytes": 10**6, "max_pixels": 40_000_000}


@pytest.mark.parametrize("shape", EXTREME_SHAPES)
def test_an_extreme_aspect_ratio_is_refused_naming_the_field(shape):
    with pytest.raises(InputError) as info:
        inspect_image(png(*shape), field="style", max_aspect_ratio=RATIO, **LIMITS)
    error = info.value
    assert error.status == 400 and error.field == "style"
    assert f"{shape[0]}x{shape[1]}" in error.message and f"1:{RATIO}" in error.message


@pytest.mark.parametrize("ratio", [1, 3, RATIO])
def test_the_bound_is_inclusive_and_comes_from_the_caller(ratio):
    for shape in [(ratio, 1), (1, ratio), (2 * ratio, 2)]:
        info = inspect_image(png(*shape), field="image", max_aspect_ratio=ratio, **LIMITS)
        assert (info.width, info.height) == shape
    for shape in [(ratio + 1, 1), (2, 2 * ratio + 1)]:
        with pytest.raises(InputError, match=f"1:{ratio} aspect-ratio limit"):
            inspect_image(png(*shape), field="image", max_aspect_ratio=ratio, **LIMITS)


def test_the_submit_check_reads_the_header_only():
    """Truncated and garbage pixel data pass: only the worker decodes pixels."""
    for data in (truncated_png(64, 48), png_with_broken_body(300, 200)):
        info = inspect_image(data, field="content", **LIMITS)
        assert info.format == "PNG" and info.width > info.height


def test_the_header_still_decides_pixels_and_shape_when_the_body_is_garbage():
    with pytest.raises(InputError) as info:
        inspect_image(png_with_broken_body(10_000, 10_000), field="content", **LIMITS)
    assert info.value.status == 413 and "pixels" in info.value.message
    with pytest.raises(InputError, match="aspect-ratio"):
        inspect_image(png_with_broken_body(100_000, 2), field="content", **LIMITS)


@pytest.mark.parametrize("data", [truncated_png(), png_with_broken_body(40, 30)])
def test_the_workers_decode_refuses_truncated_or_corrupt_data_naming_the_field(data):
    with pytest.raises(InputError) as info:
        load_rgb(data, field="content")
    assert info.value.field == "content" and "truncated or corrupt" in info.value.message


@pytest.mark.parametrize("shape", EXTREME_SHAPES)
def test_the_workers_decode_checks_the_header_before_decoding(shape):
    """The garbage body would fail to decode; the refusal names the shape instead."""
    with pytest.raises(InputError) as info:
        load_rgb(png_with_broken_body(*shape), field="style", max_aspect_ratio=RATIO)
    assert info.value.field == "style" and f"1:{RATIO}" in info.value.message
    with pytest.raises(InputError) as info:
        load_rgb(png_with_broken_body(5000, 4000), field="style", max_pixels=10**6)
    assert info.value.status == 413
