"""Image upload checks from the header alone: type sniffed from the bytes, byte, pixel and
aspect-ratio caps.

Everything here runs before a job row exists, so a bad upload leaves nothing behind. The
web thread never decodes pixels: a predict submit of 256 images would otherwise cost
about 50 s of CPU per request. Truncated or corrupt pixel data is found by the worker's
full decode (``load_rgb`` here, ``worker.engines.datasets.decode`` for fine-tune and
predict), which checks the same header bounds again before it allocates anything.

A TIFF's header says more than its size: libtiff decodes a tiled TIFF a whole tile at a
time, into a buffer as big as the tile the header declares, however small the image. So
its tile size is bounded too (``tiff_tile_problem``), here and before every decode. Strips
need no such bound: libtiff clamps RowsPerStrip to the image's height (measured: a 64x64
Deflate TIFF declaring 2**32-1 rows per strip decodes in no extra memory).

Whatever else a decoder raises on a corrupt file (``struct.error`` from a mangled EXIF
block, ``TypeError`` from a TIFF tag of the wrong type) is the file's fault, so it is
refused naming the field; MemoryError alone passes through, so that a failed allocation
still ends the job ``out_of_memory``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import InputError
from shared.settings import Settings

# Pillow format name -> (content type, file extension)
ACCEPTED_FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "GIF": ("image/gif", "gif"),
    "BMP": ("image/bmp", "bmp"),
    "TIFF": ("image/tiff", "tif"),
}

_TILE_WIDTH, _TILE_LENGTH = 322, 323  # TIFF tags
# Pixels any TIFF tile may hold, whatever the image: 1024x1024 is above the tile sizes
# writers use (GDAL and libtiff 256, others 512), so a small image in standard tiles passes;
# the buffer it costs is a few MiB.
TILE_PIXELS_FLOOR = 1024 * 1024


@dataclass(frozen=True)
class ImageInfo:
    format: str
    content_type: str
    extension: str
    width: int
    height: int


def aspect_exceeds(width: int, height: int, max_aspect_ratio: int) -> bool:
    """True when the long side is more than ``max_aspect_ratio`` times the short side.

    Kept in integers (no division), so 1:N exactly is allowed on every platform.
    """
    return max(width, height) > max_aspect_ratio * min(width, height)


def check_shape(
    width: int, height: int, *, field: str, max_pixels: int, max_aspect_ratio: int
) -> None:
    """Refuse too many pixels or too elongated a shape, from the header's size alone.

    A short side scaled up to a model's input size multiplies the long side by the same
    factor; a 100000x2 image would ask the decoder for gigabytes, so it is refused here.
    """
    if width * height > max_pixels:
        raise InputError(
            f"{field}: {width}x{height} is {width * height} pixels; the limit is "
            f"{max_pixels} pixels — downscale the image first",
            field=field,
            status=413,
            code="too_large",
        )
    if aspect_exceeds(width, height, max_aspect_ratio):
        raise InputError(
            f"{field}: {width}x{height} is more elongated than the 1:{max_aspect_ratio} "
            f"aspect-ratio limit (the long side may be at most {max_aspect_ratio} times the "
            "short side) — crop the image first",
            field=field,
        )


def _pad16(size: int) -> int:
    return -(-size // 16) * 16


def tiff_tile_problem(image: Image.Image) -> str | None:
    """Why a TIFF's declared tiles are out of proportion to the image, or None when fine.

    libtiff allocates one tile's worth of memory (tile width x height x bytes per pixel)
    to decode it: a 64x64 TIFF declaring one 26752x26752 Deflate tile passes every check
    on the image's own size and then asks for 2 GiB. A tile may cover the image padded to
    the 16-pixel multiples the TIFF spec demands of tiles, or ``TILE_PIXELS_FLOOR``
    pixels, whichever is more: its buffer costs no more than the image's own, or a few MiB.
    """
    if image.format != "TIFF":
        return None
    tags = getattr(image, "tag_v2", None) or {}
    if _TILE_WIDTH not in tags and _TILE_LENGTH not in tags:
        return None  # striped (see the module notes)
    tile_width, tile_height = tags.get(_TILE_WIDTH), tags.get(_TILE_LENGTH)
    if not all(isinstance(side, int) and side > 0 for side in (tile_width, tile_height)):
        return f"the TIFF declares an invalid tile size ({tile_width!r} x {tile_height!r})"
    width, height = image.size
    allowance = max(_pad16(width) * _pad16(height), TILE_PIXELS_FLOOR)
    if tile_width * tile_height > allowance:
        return (
            f"the TIFF is {width}x{height} but declares {tile_width}x{tile_height} tiles; a "
            f"tile may hold at most {allowance} pixels at that size — save it untiled"
        )
    return None


def _check_tiles(image: Image.Image, field: str) -> None:
    if problem := tiff_tile_problem(image):
        raise InputError(f"{field}: {problem}", field=field)


@contextmanager
def _open_header(data: bytes | str, field: str) -> Iterator[Image.Image]:
    """Open an image lazily (Pillow reads only the header), mapping open errors to InputError."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except UnidentifiedImageError:
        raise InputError(
            f"{field}: the file is not an image Atelier can read; upload a JPEG, PNG or WebP",
            field=field,
            status=415,
            code="unsupported_media_type",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"{field}: the image declares too many pixels (decompression bomb guard)",
            field=field,
            status=413,
            code="too_large",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # a hostile header makes Pillow raise more than OSError
        raise _corrupt(field, exc) from None
    with image:
        yield image


def failure_detail(exc: BaseException) -> str:
    """What a decoder raised, for a message: OSError and ValueError text says it; other
    types (``struct.error``, TypeError) need naming, or their text alone is a riddle."""
    text = str(exc)
    if isinstance(exc, OSError | SyntaxError | ValueError) and text:
        return text
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    return f"{name}: {text}" if text else name


def _corrupt(field: str, exc: Exception) -> InputError:
    return InputError(
        f"{field}: the image is truncated or corrupt ({failure_detail(exc)}); "
        "upload the file again",
        field=field,
    )


def _check_bytes(data: bytes, field: str, max_bytes: int) -> None:
    if not data:
        raise InputError(f"{field}: the uploaded file is empty", field=field)
    if len(data) > max_bytes:
        raise InputError(
            f"{field}: the file is {len(data)} bytes; the limit is {max_bytes} bytes",
            field=field,
            status=413,
            code="too_large",
        )


def inspect_image(
    data: bytes,
    *,
    field: str,
    max_bytes: int,
    max_pixels: int,
    max_aspect_ratio: int = Settings.max_aspect_ratio,
) -> ImageInfo:
    """Say what the upload is from its header, or raise InputError naming ``field``.

    No pixel is decoded: format, size, pixel count and aspect ratio all come from the
    header, so a submit costs microseconds per image whatever the image holds.
    """
    _check_bytes(data, field, max_bytes)
    with _open_header(data, field) as image:
        fmt = image.format or ""
        width, height = image.size
        tile_problem = tiff_tile_problem(image)
    if fmt not in ACCEPTED_FORMATS:
        raise InputError(
            f"{field}: {fmt or 'this'} images are not supported; "
            f"upload one of {', '.join(sorted(ACCEPTED_FORMATS))}",
            field=field,
            status=415,
            code="unsupported_media_type",
        )
    check_shape(
        width, height, field=field, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio
    )
    if tile_problem:
        raise InputError(f"{field}: {tile_problem}", field=field)
    content_type, extension = ACCEPTED_FORMATS[fmt]
    return ImageInfo(fmt, content_type, extension, width, height)


def load_rgb(
    data: bytes | str,
    *,
    field: str = "image",
    max_pixels: int = Settings.max_pixels,
    max_aspect_ratio: int = Settings.max_aspect_ratio,
) -> Image.Image:
    """Decode a stored upload upright (EXIF orientation applied) in RGB.

    The worker trusts no file it did not write, so the header bounds are checked again
    before any pixel is decoded (the TIFF tile size too); data that is truncated or corrupt
    (the submit only read the header) raises InputError naming ``field``, whatever the
    decoder raised, so a bad file fails its job ``invalid_input`` and never ``internal``.
    """
    with _open_header(data, field) as image:
        check_shape(
            *image.size, field=field, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio
        )
        _check_tiles(image, field)
        try:
            image.load()
            return _upright_rgb(image)
        except MemoryError:
            raise
        except Exception as exc:  # EXIF and TIFF tag parsers raise struct.error, TypeError…
            raise _corrupt(field, exc) from None


def _upright_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and flatten any mode to RGB (transparency onto white)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode == "I":
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")
