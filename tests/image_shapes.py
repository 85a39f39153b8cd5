"""Images whose header and body the tests control: extreme shapes, broken bodies.

A PNG's size is in its IHDR chunk, so a file can declare any shape while its pixel data
is garbage: decoding it fails, reading its header does not. A check that names the shape
(rather than the broken data) therefore ran on the header alone, before any decode.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from tests.conftest import tiny_png

EXTREME_SHAPES = [(100_000, 2), (2, 100_000)]


def png(width: int, height: int) -> bytes:
    """A real, fully decodable grayscale PNG (100000x2 is under 1 KB: zeros compress)."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 0).save(buffer, "PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_broken_body(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` and whose pixel data is garbage."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"this is not a zlib stream")
        + _chunk(b"IEND", b"")
    )


def truncated_png(width: int = 64, height: int = 64) -> bytes:
    """A real PNG cut in half: the header is intact, the pixel data stops early."""
    data = tiny_png(width, height)
    return data[: len(data) // 2]
