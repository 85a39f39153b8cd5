"""Image upload checks from the header alone: type sniffed from the bytes, byte, pixel and
aspect-ratio caps.

Everything here runs before a job row exists, so a bad upload leaves nothing behind. The
web thread never decodes pixels: a predict submit of 256 images would otherwise cost
about 50 s of CPU per request. Truncated or corrupt pixel data is found by the worker's
full decode (``load_rgb`` here, ``worker.engines.datasets.decode`` for fine-tune and
predict), which checks the same header bounds again before it allocates anything.
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
    except (OSError, SyntaxError, ValueError) as exc:
        raise _corrupt(field, exc) from None
    with image:
        yield image


def _corrupt(field: str, exc: Exception) -> InputError:
    return InputError(
        f"{field}: the image is truncated or corrupt ({exc}); upload the file again",
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
    before any pixel is decoded; data that is truncated or corrupt (the submit only read
    the header) raises InputError naming ``field``.
    """
    with _open_header(data, field) as image:
        check_shape(
            *image.size, field=field, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio
        )
        try:
            image.load()
            return _upright_rgb(image)
        except (OSError, SyntaxError, ValueError) as exc:
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
