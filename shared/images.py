"""Image upload checks: type sniffed from the bytes, size and pixel caps, a full decode.

Everything here runs before a job row exists, so a bad upload leaves nothing behind.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import InputError

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


def inspect_image(data: bytes, *, field: str, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Decode the upload fully and say what it is, or raise InputError naming ``field``."""
    if not data:
        raise InputError(f"{field}: the uploaded file is empty", field=field)
    if len(data) > max_bytes:
        raise InputError(
            f"{field}: the file is {len(data)} bytes; the limit is {max_bytes} bytes",
            field=field,
            status=413,
            code="too_large",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format or ""
                if fmt not in ACCEPTED_FORMATS:
                    raise InputError(
                        f"{field}: {fmt or 'this'} images are not supported; "
                        f"upload one of {', '.join(sorted(ACCEPTED_FORMATS))}",
                        field=field,
                        status=415,
                        code="unsupported_media_type",
                    )
                width, height = image.size
                if width * height > max_pixels:
                    raise InputError(
                        f"{field}: {width}x{height} is {width * height} pixels; the limit is "
                        f"{max_pixels} pixels — downscale the image first",
                        field=field,
                        status=413,
                        code="too_large",
                    )
                image.load()
    except InputError:
        raise
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
        raise InputError(
            f"{field}: the image is truncated or corrupt ({exc}); upload the file again",
            field=field,
        ) from None
    content_type, extension = ACCEPTED_FORMATS[fmt]
    return ImageInfo(fmt, content_type, extension, width, height)


def load_rgb(data: bytes | str) -> Image.Image:
    """Open an already checked image upright (EXIF orientation applied) in RGB."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info
        ):
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        if image.mode.startswith("I;16") or image.mode == "I":
            return image.point(lambda v: v / 256).convert("L").convert("RGB")
        return image.convert("RGB")
