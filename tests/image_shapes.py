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


def tiff(tags: dict[int, tuple[int, list[int]]], body: bytes) -> bytes:
    """A little-endian TIFF: ``body`` at offset 8, then one IFD of ``{tag: (type, values)}``.

    Types 3 (SHORT) and 4 (LONG) only; values over 4 bytes go out of line, as TIFF wants.
    Written by hand because Pillow cannot write tiles, nor the malformed tags tested here.
    """
    out = bytearray(b"II*\0\0\0\0\0" + body)
    entries = []
    for tag in sorted(tags):
        kind, values = tags[tag]
        packed = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'L'}", *values)
        if len(packed) > 4:
            out += bytes(len(out) % 2)
            offset = len(out)
            out += packed
            packed = struct.pack("<L", offset)
        entries.append(struct.pack("<HHL", tag, kind, len(values)) + packed.ljust(4, b"\0"))
    out += bytes(len(out) % 2)
    struct.pack_into("<L", out, 4, len(out))
    return bytes(out + struct.pack("<H", len(entries)) + b"".join(entries) + bytes(4))


TILE_COLOUR = (200, 40, 40)


def tiled_tiff(width: int, height: int, tile: int, tile_data: bytes | None = None) -> bytes:
    """An 8-bit RGB Deflate TIFF in ``tile`` x ``tile`` tiles.

    By default every tile is a real compressed tile of ``TILE_COLOUR`` (all tile offsets
    point at one copy), so the file decodes; ``tile_data`` replaces it (garbage: for
    tests where only the header may be read).
    """
    count = -(-width // tile) * -(-height // tile)
    data = zlib.compress(bytes(TILE_COLOUR) * tile * tile) if tile_data is None else tile_data
    tags = {
        256: (4, [width]),
        257: (4, [height]),
        258: (3, [8, 8, 8]),  # bits per sample
        259: (3, [8]),  # compression: Deflate
        262: (3, [2]),  # photometric: RGB
        277: (3, [3]),  # samples per pixel
        284: (3, [1]),  # planar configuration: contiguous
        322: (4, [tile]),  # tile width
        323: (4, [tile]),  # tile length
        324: (4, [8] * count),  # tile offsets
        325: (4, [len(data)] * count),  # tile byte counts
    }
    return tiff(tags, data)


def with_mangled_exif(fmt: str = "JPEG") -> bytes:
    """An image whose EXIF asks for a quarter turn (Orientation 6) and whose Make tag
    (0x010F, ASCII) is renumbered 0x0109, a SHORT tag. Turning it upright makes Pillow write
    the EXIF again, and packing the text as a SHORT raises ``struct.error``; the header
    reads fine. JPEG and WebP both carry EXIF so."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "cam"
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (90, 30, 200)).save(buffer, fmt, exif=exif.tobytes())
    data = bytearray(buffer.getvalue())
    at = data.index(b"\x01\x0f\x00\x02")  # Make, type ASCII (little-endian EXIF)
    data[at + 1] = 0x09
    return bytes(data)


def tiff_with_mistyped_strip_offsets() -> bytes:
    """An uncompressed 24x16 TIFF whose StripOffsets (273) entry is typed UNDEFINED (7)
    instead of LONG: the header reads fine, and decoding raises ``TypeError``."""
    buffer = io.BytesIO()
    Image.new("L", (24, 16), 128).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack_from("<L", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack_from("<H", data, entry)[0] == 273:
            struct.pack_into("<H", data, entry + 2, 7)
            return bytes(data)
    raise AssertionError("Pillow wrote no StripOffsets tag")


CORRUPT_HEADERS = {
    "exif.jpg": with_mangled_exif,
    "exif.webp": lambda: with_mangled_exif("WEBP"),
    "strip.tif": tiff_with_mistyped_strip_offsets,
}
