"""The upload check reads headers only and bounds the aspect ratio; the worker's decode
checks the same bounds before it decodes, and finds truncated or corrupt data.

A TIFF's header also bounds its tiles (libtiff allocates a whole declared tile to decode
it), and whatever a decoder raises on a corrupt header is refused naming the field.
"""

from __future__ import annotations

import pytest

from shared.errors import InputError
from shared.images import inspect_image, load_rgb
from shared.settings import Settings
from tests.image_shapes import (
    CORRUPT_HEADERS,
    EXTREME_SHAPES,
    TILE_COLOUR,
    png,
    png_with_broken_body,
    tiled_tiff,
    truncated_png,
)

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


def test_a_tiff_tile_far_larger_than_its_image_is_refused_from_the_header():
    """A 64x64 TIFF declaring one 26752x26752 Deflate tile passed inspect_image, and
    load_rgb then had libtiff allocate the whole tile: 2 GiB for a 2 MiB upload. Both refuse
    it now from the header; the garbage body shows no tile was decoded."""
    with pytest.raises(InputError) as info:
        inspect_image(tiled_tiff(64, 64, 26752, b"not deflate data"), field="style", **LIMITS)
    error = info.value
    assert error.field == "style" and error.status == 400
    assert "64x64 but declares 26752x26752 tiles" in error.message
    with pytest.raises(InputError) as info:  # 4096: a failure here costs 48 MiB, not 2 GiB
        load_rgb(tiled_tiff(64, 64, 4096, b"not deflate data"), field="content")
    assert info.value.field == "content" and "4096x4096 tiles" in info.value.message


@pytest.mark.parametrize(
    ("shape", "tile"), [((64, 64), 256), ((300, 200), 256), ((40, 24), 16), ((1100, 1000), 1024)]
)
def test_tiled_tiffs_in_tile_sizes_writers_use_pass_and_decode(shape, tile):
    """A small image in 256 px tiles (the libtiff and GDAL default) is ordinary: the bound
    on a tile is the image padded to 16 px, or 1024x1024 pixels, whichever is more."""
    data = tiled_tiff(*shape, tile)
    info = inspect_image(data, field="style", **LIMITS)
    assert (info.format, info.width, info.height) == ("TIFF", *shape)
    image = load_rgb(data, field="style")
    assert image.size == shape and image.getpixel((shape[0] - 1, shape[1] - 1)) == TILE_COLOUR


@pytest.mark.parametrize(
    ("shape", "tile", "allowed"),
    [
        ((64, 64), 1024, True),  # the floor: 1024x1024 pixels for any image
        ((64, 64), 1040, False),
        ((1100, 1000), 1054, True),  # 1054**2 <= 1104x1008, the image padded to 16 px
        ((1100, 1000), 1056, False),
    ],
)
def test_the_tile_bound_is_exact(shape, tile, allowed):
    data = tiled_tiff(*shape, tile, b"header only")
    if allowed:
        assert inspect_image(data, field="style", **LIMITS).width == shape[0]
    else:
        with pytest.raises(InputError, match=f"declares {tile}x{tile} tiles"):
            inspect_image(data, field="style", **LIMITS)


@pytest.mark.parametrize("name", sorted(CORRUPT_HEADERS))
def test_any_decoder_failure_on_a_corrupt_header_names_the_field(name):
    """EXIF that Pillow cannot write back raises struct.error in exif_transpose, and a
    mistyped TIFF StripOffsets raises TypeError in load(): both escaped load_rgb, so a
    style job failed ``internal`` instead of ``invalid_input``. The submit's header check
    passes both (it decodes nothing); the worker's decode refuses them naming the field."""
    data = CORRUPT_HEADERS[name]()
    assert inspect_image(data, field="style", **LIMITS).width == 24
    with pytest.raises(InputError) as info:
        load_rgb(data, field="style")
    error = info.value
    assert error.field == "style" and error.status == 400
    assert "truncated or corrupt" in error.message
