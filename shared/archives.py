"""Reading uploaded dataset archives (.zip, .tar, .tar.gz) without trusting them.

Nothing here writes a member to disk: members are listed, checked and read into memory,
so a hostile name (``/etc/passwd``, ``../../x``, a symlink) has nowhere to land. The
checks still refuse such archives outright, with a message, because an archive that
tries them is not a dataset anyone meant to send:

* names: no absolute paths (``/x``, ``C:\\x``), no ``..`` component, no NUL;
* members: regular files and folders only (no symlinks, hard links, devices, sparse files),
  no encrypted zip entries, no duplicate names, no file whose name is empty once
  normalised (``./`` as a regular file: there is nothing to call it, and its data would
  be inflated without counting as a member);
* zip compression: stored or deflate only. zipfile inflates bzip2 and LZMA members a whole
  compressed chunk at a time with no cap on the output (bzip2 expands about a million to
  one), so neither is ever handed to it;
* caps: file count, each member's size, total unpacked size and the unpacked/packed ratio
  (a zip bomb declares sizes its compressed data cannot honestly hold).

The work of answering an upload is bounded by the limits, never by the archive:

* every header counts toward ``max_entries``: folders, pax and GNU long-name headers, gzip
  members and zip entries too, so a flood of cheap entries stops early;
* tar headers are parsed here, a 512-byte block at a time, from a stream decompressed in
  small pieces; ``tarfile`` never sees uploaded bytes. Extended (pax) and GNU long-name
  headers over ``max_header_bytes`` are refused before they are read, and pax records are
  split by hand, so no regular expression sees a hostile digit run (CPython's own pax regex
  is quadratic before 3.11.10 / 3.12.6, CVE-2024-6232);
* decompressed bytes are counted as zlib hands them out, against the unpacked cap and the
  ratio to the compressed bytes zlib has taken so far (not the upload's length, which
  trailing junk could pad), so a gzip bomb stops there whatever its headers declare; bytes
  after the last gzip member must be zero padding;
* zip members are read a piece at a time: zipfile inflates deflate with an output cap of
  the piece asked for and stops at the declared size, so a member that lies about its size
  costs at most its declared size and one piece;
* a zip's central directory is walked cheaply before ``zipfile`` parses it, so ``zipfile``
  only ever builds objects for a capped number of entries with small fields;
* any other failure while parsing (``zipfile`` raising IndexError on an empty name, say)
  is a corrupt archive, a 400 naming ``dataset``, never a 500. MemoryError alone passes
  through, so that an allocation failure stays one.

Declared sizes are still checked before anything is decompressed, so an archive that
admits to being too big is refused without inflating any of it.
"""

from __future__ import annotations

import io
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from shared.errors import InputError

MIB = 1024 * 1024
FIELD = "dataset"
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_DRIVE = re.compile(r"^[A-Za-z]:")
_PIECE = 256 * 1024  # decompressed bytes taken from zlib at a time
_INPUT = 16 * 1024  # compressed bytes fed at a time; small, since zlib copies leftovers
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what an archive may unpack to, and so on the work of reading it.

    The defaults suit image-folder datasets. ``max_entries`` leaves room for a folder and
    a pax header beside each file; ``max_header_bytes`` caps one pax header, one GNU long
    name, or one zip entry's name + extra + comment fields; ``max_pax_records`` caps the
    records of all pax headers together (a real archive has a few per file), since each
    costs a step of parsing however small it is.
    """

    max_files: int = 10_000
    max_member_bytes: int = 64 * MIB
    max_total_bytes: int = 1024 * MIB
    max_ratio: float = 100.0
    max_entries: int = 30_000
    max_header_bytes: int = 8 * 1024
    max_name_chars: int = 1024
    max_pax_records: int = 200_000


@dataclass(frozen=True)
class Member:
    name: str  # normalised relative POSIX path
    size: int  # declared unpacked size in bytes


def _refuse(message: str, *, status: int = 400, code: str = "invalid") -> InputError:
    return InputError(f"dataset: {message}", field=FIELD, status=status, code=code)


def _too_large(message: str) -> InputError:
    return _refuse(message, status=413, code="too_large")


def safe_name(raw: str) -> str:
    """The member's normalised relative path, or InputError for an escaping name."""
    if "\x00" in raw:
        raise _refuse(f"member name {raw!r} contains a NUL byte")
    name = raw.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        raise _refuse(f"member {raw!r} has an absolute path; archive relative paths only")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refuse(f"member {raw!r} points outside the archive ('..'); remove it")
    return "/".join(parts)


def is_junk(name: str) -> bool:
    """OS droppings (macOS resource forks, Finder/Explorer files, hidden files) to skip."""
    parts = name.split("/")
    return (
        "__MACOSX" in parts
        or any(part.startswith(".") for part in parts)
        or parts[-1].lower() in JUNK_NAMES
    )


class _Budget:
    """Counts entries, members, declared and decompressed bytes against the limits."""

    def __init__(self, limits: ArchiveLimits, packed_bytes: int) -> None:
        self.limits = limits
        self.packed = max(packed_bytes, 1)
        self.entries = 0
        self.files = 0
        self.total = 0
        self.unpacked_bytes = 0
        self.records = 0
        self.seen: set[str] = set()

    def entry(self) -> None:
        """One header or entry of any kind: folders and extended headers cost work too."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise _too_large(
                f"more than {self.limits.max_entries} entries (files, folders and headers); "
                "split the dataset or sample it"
            )

    def pax_records(self, count: int) -> None:
        """Records of one pax header: parsing costs per record, however small each is."""
        self.records += count
        if self.records > self.limits.max_pax_records:
            raise _too_large(
                f"more than {self.limits.max_pax_records} pax header records; "
                "a dataset needs a few per file"
            )

    def unpacked(self, size: int, packed: int | None = None) -> None:
        """Decompressed bytes as they come out, whatever the headers declared.

        ``packed`` is the compressed bytes that produced them so far; the ratio is taken
        against it, so bytes that zlib never reads (trailing junk after the gzip stream)
        cannot raise the allowance. Without it, the upload's length is the measure.
        """
        self.unpacked_bytes += size
        self._check_total(self.unpacked_bytes, self.packed if packed is None else packed)

    def add(self, name: str, size: int, packed_size: int | None) -> None:
        lim = self.limits
        if len(name) > lim.max_name_chars:
            raise _refuse(
                f"a member name is {len(name)} characters long; the limit is {lim.max_name_chars}"
            )
        if name in self.seen:
            raise _refuse(f"member {name!r} appears twice; an archive must not repeat names")
        self.seen.add(name)
        self.files += 1
        self.total += size
        if self.files > lim.max_files:
            raise _too_large(f"more than {lim.max_files} files; split the dataset or sample it")
        if size > lim.max_member_bytes:
            raise _too_large(
                f"member {name!r} unpacks to {size} bytes; the limit per file is "
                f"{lim.max_member_bytes}"
            )
        if packed_size is not None and size > 1024 and size / max(packed_size, 1) > lim.max_ratio:
            raise _too_large(
                f"member {name!r} compresses {size / max(packed_size, 1):.0f}:1, above the "
                f"{lim.max_ratio:.0f}:1 limit (a decompression bomb?)"
            )
        self._check_total(self.total, self.packed)

    def _check_total(self, total: int, packed: int) -> None:
        lim = self.limits
        if total > lim.max_total_bytes:
            raise _too_large(
                f"unpacks to more than {lim.max_total_bytes} bytes; upload a smaller dataset"
            )
        ratio = total / max(packed, 1)
        if total > MIB and ratio > lim.max_ratio:
            raise _too_large(
                f"the archive unpacks to {ratio:.0f} times the compressed bytes it came from, "
                f"above the {lim.max_ratio:.0f}:1 limit (a decompression bomb?)"
            )


def sniff_format(data: bytes) -> str:
    """``zip``, ``tar.gz`` or ``tar`` from the bytes (never the file name)."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if data[:2] == b"\x1f\x8b":
        return "tar.gz"
    if len(data) >= 262 and data[257:262] == b"ustar":
        return "tar"
    raise _refuse(
        "not a .zip, .tar or .tar.gz archive; pack <class>/<image> folders into one",
        status=415,
        code="unsupported_media_type",
    )


# --- tar: a stream of 512-byte blocks, decompressed a piece at a time ---------------------

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around a deflate stream
_FILE_TYPES = (b"0", b"\0", b"7")  # regular, old-style regular, contiguous
_LINK_TYPES = (b"1", b"2")
_PAX_TYPES = (b"x", b"X", b"g")  # extended, Solaris extended, global
_LONG_TYPES = (b"L", b"K")  # GNU long name, long link name
_MAX_PAX_RECORDS = 64  # per header; real ones hold a handful (path, times, xattrs)
_MAX_LENGTH_DIGITS = 6  # a record's length field; records are capped at a few KiB anyway


class _TarStream:
    """The tar bytes of an upload, for .tar.gz inflated on demand, counted as they appear.

    Every piece zlib hands out goes through ``budget.unpacked`` before it is used, so the
    stream stops at the unpacked cap or the ratio; besides what a caller asks for, at most
    one piece (256 KiB) is held. The ratio is measured against the compressed bytes zlib has
    taken, so it holds at every point of the stream, not just over the whole upload. Several
    gzip members in a row are one stream (RFC 1952), and each counts as an entry, since each
    costs a decompressor; after the last, only zero bytes (padding) may follow.
    """

    def __init__(self, data: bytes, gz: bool, budget: _Budget) -> None:
        self._bytes = data
        self._data = memoryview(data)
        self._budget = budget
        self._zlib = zlib.decompressobj(_GZIP_WBITS) if gz else None
        self._fed = 0  # input bytes handed to zlib (or, for a plain tar, taken)
        self._carry = b""  # input left over when one gzip member ended
        self._piece = memoryview(b"")
        self.offset = 0  # tar bytes taken so far

    def block(self) -> bytes | None:
        """The next header block, or None at the end-of-archive marker or a clean end."""
        if not self._piece and not self._refill():
            return None
        block = self.read(_BLOCK)
        return None if block == _ZERO_BLOCK else block

    def read(self, size: int) -> bytes:
        """Exactly ``size`` tar bytes; a stream that ends first is a truncated archive."""
        parts = []
        while size > 0:
            part = self._take(size)
            parts.append(part)
            size -= len(part)
        return b"".join(parts)

    def skip(self, size: int) -> None:
        """Passes over ``size`` tar bytes (inflating them, but keeping none)."""
        while size > 0:
            size -= len(self._take(size))

    def finish(self) -> None:
        """Passes over whatever follows the end-of-archive marker, to the end of the upload.

        For a .tar.gz that inflates the rest of the gzip stream (tar pads it with zero
        blocks), counted like the rest, so that what lies after the last gzip member is
        seen and refused unless it is zero padding.
        """
        if self._zlib is None:
            return
        self._piece = memoryview(b"")
        while self._refill():
            self._piece = memoryview(b"")

    def _take(self, most: int) -> memoryview:
        if not self._piece and not self._refill():
            raise ValueError("the archive ends in the middle of a member")
        part, self._piece = self._piece[:most], self._piece[most:]
        self.offset += len(part)
        return part

    def _refill(self) -> bool:
        if self._zlib is None:
            piece = self._plain()
            self._budget.unpacked(len(piece))
        else:
            piece = self._inflate()
            self._budget.unpacked(len(piece), self._fed - len(self._zlib.unconsumed_tail))
        self._piece = memoryview(piece)
        return bool(piece)

    def _plain(self) -> memoryview:
        piece = self._data[self._fed : self._fed + _PIECE]
        self._fed += len(piece)
        return piece

    def _inflate(self) -> bytes:
        """The next piece out of zlib; b'' once the gzip stream and any members after it end."""
        while True:
            if self._zlib.eof and not self._next_member():
                return b""
            source = self._zlib.unconsumed_tail or self._input()
            piece = self._zlib.decompress(source, _PIECE)
            if piece:
                return piece
            if not source and not self._zlib.eof:
                raise ValueError("the gzip stream is truncated")

    def _input(self) -> bytes | memoryview:
        if self._carry:
            source, self._carry = self._carry, b""
            return source
        source = self._data[self._fed : self._fed + _INPUT]
        self._fed += len(source)
        return source

    def _next_member(self) -> bool:
        """Starts the gzip member that follows the one just ended, if one does."""
        self._carry = self._zlib.unused_data
        head = self._carry[:2]
        if len(head) < 2:
            head = (head + bytes(self._data[self._fed : self._fed + 2]))[:2]
        if head != _GZIP_MAGIC:
            self._check_trailing()
            return False  # the end of the stream
        self._budget.entry()
        self._zlib = zlib.decompressobj(_GZIP_WBITS)
        return True

    def _check_trailing(self) -> None:
        """ValueError unless all that follows the last gzip member is zero bytes.

        gzip(1) and Python's gzip module accept zero padding there and nothing else; junk
        is refused rather than ignored (it is no part of the dataset, and counted no way).
        """
        rest = len(self._carry) + len(self._data) - self._fed
        zeros = self._carry.count(0) + self._bytes.count(0, self._fed)
        if zeros != rest:
            raise ValueError(f"{rest} bytes that are not gzip data follow the gzip stream")


@dataclass(frozen=True)
class _Header:
    name: str
    typeflag: bytes
    size: int


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: str  # "file", "dir", "link" or "other" (device, fifo, sparse, unknown)
    size: int


def _text(field: bytes) -> str:
    """A NUL-terminated name field, decoded as tarfile would (UTF-8, raw bytes escaped)."""
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A numeric header field: octal (NUL/space terminated) or GNU base-256 (0x80 first)."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if field[0] & 0x80 or digits.strip(b"01234567"):
        raise ValueError("a tar header holds a malformed number")
    return int(digits or b"0", 8)


def _checksum_ok(block: bytes) -> bool:
    """The header checksum, counted as tarfile does: unsigned bytes, or signed ones."""
    stored = _number(block[148:156])
    if stored == 256 + sum(block) - sum(block[148:156]):
        return True
    signed = struct.unpack_from("148b8x356b", block)
    return stored == 256 + sum(signed)


def _parse_header(block: bytes) -> _Header:
    """One ustar / GNU header block; a bad checksum or number means a corrupt archive."""
    if not _checksum_ok(block):
        raise ValueError("a tar header has a bad checksum")
    name = _text(block[0:100])
    if block[257:265] == b"ustar\x0000" and (prefix := _text(block[345:500])):
        name = f"{prefix}/{name}"
    return _Header(name, block[156:157], _number(block[124:136]))


def _pax_records(payload: bytes) -> list[tuple[bytes, bytes]]:
    """``LEN key=value\\n`` records, split by hand with a short length field.

    No regular expression sees the payload: CPython's pax regex backtracks quadratically
    on long digit runs (CVE-2024-6232, fixed in 3.11.10 / 3.12.6 only).
    """
    payload = payload.rstrip(b"\0")
    records: list[tuple[bytes, bytes]] = []
    at, size = 0, len(payload)
    while at < size:
        if len(records) == _MAX_PAX_RECORDS:
            raise ValueError(f"a pax header holds more than {_MAX_PAX_RECORDS} records")
        space = payload.find(b" ", at, at + _MAX_LENGTH_DIGITS + 1)
        if space < 0 or not payload[at:space].isdigit():
            raise ValueError(f"a pax header holds a malformed record at byte {at}")
        end = at + int(payload[at:space])
        if not space + 1 < end <= size or payload[end - 1] != 0x0A:
            raise ValueError(f"a pax header holds a malformed record at byte {at}")
        key, equals, value = payload[space + 1 : end - 1].partition(b"=")
        if not equals or not key:
            raise ValueError(f"a pax header holds a malformed record at byte {at}")
        records.append((key, value))
        at = end
    return records


def _decimal(value: bytes) -> int:
    if not value.isdigit() or len(value) > 20:
        raise ValueError("a pax header holds a malformed size")
    return int(value)


def _extended_values(
    typeflag: bytes, payload: bytes, budget: _Budget
) -> dict[str, str | int | bool]:
    """What an extended header says about the member after it (a global one: nothing)."""
    if typeflag in _LONG_TYPES:
        return {"path" if typeflag == b"L" else "linkpath": _text(payload)}
    records = _pax_records(payload)
    budget.pax_records(len(records))
    values: dict[str, str | int | bool] = {}
    for key, value in records:
        if key == b"path":
            values["path"] = value.decode("utf-8", "surrogateescape")
        elif key == b"size":
            values["size"] = _decimal(value)
        elif key.startswith(b"GNU.sparse."):
            values["sparse"] = True
    return {} if typeflag == b"g" else values


def _read_extended(stream: _TarStream, header: _Header, limits: ArchiveLimits) -> bytes:
    """An extended header's payload, refused before reading when over the header cap."""
    if header.size > limits.max_header_bytes:
        kind = "GNU long-name" if header.typeflag in _LONG_TYPES else "pax extended"
        raise _too_large(
            f"a {kind} header of {header.size} bytes; tar headers over "
            f"{limits.max_header_bytes} bytes are refused (a hostile archive?)"
        )
    payload = stream.read(header.size)
    stream.skip(-header.size % _BLOCK)
    return payload


def _entry(header: _Header, overrides: dict[str, str | int | bool]) -> _Entry:
    name = str(overrides.get("path", header.name))
    size = int(overrides.get("size", header.size))
    flag = header.typeflag
    if flag == b"\0" and name.endswith("/"):
        flag = b"5"  # old tars mark folders by the trailing slash alone
    if overrides.get("sparse") or flag not in (*_FILE_TYPES, *_LINK_TYPES, b"5"):
        return _Entry(name, "other", size)
    if flag == b"5" and size:
        raise ValueError(f"folder {name!r} declares {size} bytes of data")
    return _Entry(name, "file" if flag in _FILE_TYPES else "dir" if flag == b"5" else "link", size)


def _tar_entries(stream: _TarStream, budget: _Budget) -> Iterator[_Entry]:
    """Each member of the tar stream, with its pax / GNU long-name overrides applied.

    The caller may ``stream.read(entry.size)`` before asking for the next entry; whatever
    it leaves of the member is skipped here. Every header, extended ones too, is counted.
    """
    overrides: dict[str, str | int | bool] = {}
    while (block := stream.block()) is not None:
        budget.entry()
        header = _parse_header(block)
        if header.typeflag in _PAX_TYPES or header.typeflag in _LONG_TYPES:
            payload = _read_extended(stream, header, budget.limits)
            overrides.update(_extended_values(header.typeflag, payload, budget))
            continue
        entry = _entry(header, overrides)
        overrides = {}
        start = stream.offset
        yield entry
        stream.skip(entry.size - (stream.offset - start) + (-entry.size % _BLOCK))
    if overrides:
        raise ValueError("an extended header has no member after it")


# --- zip: a capped walk of the central directory before zipfile parses it ----------------

_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_MAX_CENTRAL_BYTES = 16 * MIB  # 10,000 entries with long names take about 3 MiB
_MAX_EXTRA_FIELDS = 16  # per entry; real ones carry a few (zip64, times, unix ids, unicode)


def _central_directory(data: bytes) -> tuple[int, int]:
    """(start, size) of the central directory, found by the steps zipfile's _EndRecData takes.

    The walk below must cover exactly the records zipfile will parse, so this repeats its
    rules: the end record is the last 22 bytes when they hold one with no comment, else the
    last signature in the final 64 KiB + 22; a zip64 locator 20 bytes before it points to
    the zip64 end record; the directory ends where the end record(s) begin. zipfile reads
    from a BytesIO, where a seek before the start lands on 0, and so does this.
    """
    at = len(data) - _END.size
    if not (at >= 0 and data[at : at + 4] == b"PK\x05\x06" and data[-2:] == b"\0\0"):
        at = data.rfind(b"PK\x05\x06", max(len(data) - (1 << 16) - _END.size, 0))
        if at < 0 or at + _END.size > len(data):
            raise zipfile.BadZipFile("File is not a zip file")
    size = _END.unpack_from(data, at)[5]
    locator = max(at - _END64_LOCATOR.size, 0)
    record = max(locator - _END64.size, 0)
    if (
        data[locator : locator + 4] == b"PK\x06\x07"
        and data[record : record + 4] == b"PK\x06\x06"
        and len(data) >= max(locator + _END64_LOCATOR.size, record + _END64.size)
    ):
        size = _END64.unpack_from(data, record)[8]
        at -= _END64_LOCATOR.size + _END64.size
    return at - size, size


def _extra_fields(extra: bytes) -> int:
    """How many fields an entry's extra block holds (zipfile's parse of it is quadratic)."""
    count = at = 0
    while len(extra) - at >= 4 and count <= _MAX_EXTRA_FIELDS:
        at += 4 + struct.unpack_from("<H", extra, at + 2)[0]
        count += 1
    return count


def _walk_central(data: bytes, budget: _Budget) -> tuple[int, int]:
    """(start, entries) of the central directory, each entry counted and its fields capped."""
    start, size = _central_directory(data)
    if size > _MAX_CENTRAL_BYTES:
        raise _too_large(
            f"the zip's central directory is {size} bytes, more than the "
            f"{_MAX_CENTRAL_BYTES} a dataset needs (a flood of entries?)"
        )
    if start < 0:
        raise zipfile.BadZipFile("Bad offset for central directory")
    end, at, count = min(start + size, len(data)), start, 0
    while at - start < size:
        budget.entry()
        if at + _CENTRAL.size > end:
            raise zipfile.BadZipFile("Truncated central directory")
        record = _CENTRAL.unpack_from(data, at)
        if record[0] != b"PK\x01\x02":
            raise zipfile.BadZipFile("Bad magic number for central directory")
        name, extra, comment = record[12:15]
        if name + extra + comment > budget.limits.max_header_bytes:
            raise _too_large(
                f"zip entry {count + 1} has {name + extra + comment} bytes of name, extra "
                f"fields and comment; the limit is {budget.limits.max_header_bytes}"
            )
        fields = at + _CENTRAL.size + name
        if _extra_fields(data[fields : min(fields + extra, end)]) > _MAX_EXTRA_FIELDS:
            raise _refuse(f"zip entry {count + 1} has more than {_MAX_EXTRA_FIELDS} extra fields")
        at, count = fields + extra + comment, count + 1
    return start, count


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | None:
    """The member's bytes, inflated a piece at a time and counted; more than it declared is
    damage (None), not a reason to keep inflating. So is a bad CRC or a broken stream.

    Only stored and deflate members are opened (the listing refuses the rest; this is the
    second guard): zipfile's ``_read1`` gives zlib an output cap of the size asked for and
    cuts the output at the declared size, but bzip2 and LZMA get no cap at all. Any failure
    but MemoryError is damage to this member alone.
    """
    if info.compress_type not in _ZIP_METHODS or info.flag_bits & 0x1:
        return None
    parts, got = [], 0
    try:
        with archive.open(info) as handle:
            while part := handle.read(_PIECE):
                got += len(part)
                if got > info.file_size:
                    return None
                parts.append(part)
    except MemoryError:
        raise
    except Exception:
        return None
    return b"".join(parts) if got == info.file_size else None


def _nameless(raw: str) -> InputError:
    """A regular file whose name is empty once normalised (``''``, ``.``, ``./``).

    Refused, not skipped: a skipped tar member's data is still inflated to pass over it,
    uncounted as a member, so a nameless 2**80-byte entry would inflate to the caps.
    """
    return _refuse(f"member {raw!r} is a file with no name; remove it")


def _check_method(info: zipfile.ZipInfo) -> None:
    """Refuses a zip entry compressed other than stored or deflate (see the module notes)."""
    if info.compress_type not in _ZIP_METHODS:
        method = zipfile.compressor_names.get(info.compress_type, f"method {info.compress_type}")
        raise _refuse(
            f"member {info.filename!r} is compressed with {method}; only "
            f"{' and '.join(_ZIP_METHODS.values())} zip members are accepted — "
            "re-create the zip with ordinary (deflate) compression"
        )


class SafeArchive:
    """A checked archive held in memory: its regular-file members and a way to read them."""

    def __init__(self, data: bytes, limits: ArchiveLimits | None = None) -> None:
        if not data:
            raise _refuse("the uploaded file is empty")
        self.data = data
        self.limits = limits or ArchiveLimits()
        self.format = sniff_format(data)
        try:
            self.members = self._list_zip() if self.format == "zip" else self._list_tar()
        except (InputError, MemoryError):
            raise
        except Exception as exc:  # zipfile and zlib raise many types on hostile bytes
            detail = str(exc) or type(exc).__name__
            raise _refuse(f"the {self.format} archive is corrupt or truncated ({detail})") from None

    def _list_zip(self) -> list[Member]:
        budget = _Budget(self.limits, len(self.data))
        start, count = _walk_central(self.data, budget)
        members = []
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            infos = archive.infolist()
            if archive.start_dir != start or len(infos) != count:
                raise zipfile.BadZipFile("the central directory is not where it claims to be")
            for info in infos:
                name = safe_name(info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise _refuse(f"member {info.filename!r} is a symbolic link; links are refused")
                if info.flag_bits & 0x1:
                    raise _refuse(f"member {info.filename!r} is encrypted; upload it unencrypted")
                _check_method(info)
                if info.filename.endswith("/"):  # not is_dir(): that fails on an empty name
                    continue
                if not name:
                    raise _nameless(info.filename)
                budget.add(name, info.file_size, info.compress_size)
                members.append(Member(name, info.file_size))
        return members

    def _tar_stream(self, budget: _Budget) -> _TarStream:
        return _TarStream(self.data, self.format == "tar.gz", budget)

    def _list_tar(self) -> list[Member]:
        budget = _Budget(self.limits, len(self.data))
        members = []
        stream = self._tar_stream(budget)
        for entry in _tar_entries(stream, budget):
            name = safe_name(entry.name)
            if entry.kind == "link":
                raise _refuse(f"member {entry.name!r} is a link; links are refused")
            if entry.kind == "dir":
                continue
            if entry.kind != "file":
                raise _refuse(f"member {entry.name!r} is not a regular file; remove it")
            if not name:
                raise _nameless(entry.name)
            budget.add(name, entry.size, None)
            members.append(Member(name, entry.size))
        stream.finish()
        return members

    def read(self, wanted: set[str]) -> Iterator[tuple[str, bytes | None]]:
        """(name, bytes) for each wanted member in archive order; None when it is unreadable.

        A member whose data is damaged (bad CRC, truncated) yields None rather than
        failing the whole dataset; the caller counts those. Reading goes through the same
        bounded parsers as the listing, so it costs no more than the listing did.
        """
        if self.format == "zip":
            yield from self._read_zip(wanted)
        else:
            yield from self._read_tar(wanted)

    def _read_zip(self, wanted: set[str]) -> Iterator[tuple[str, bytes | None]]:
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            for info in archive.infolist():
                name = safe_name(info.filename)
                if name in wanted and not info.filename.endswith("/"):
                    yield name, _read_zip_member(archive, info)

    def _read_tar(self, wanted: set[str]) -> Iterator[tuple[str, bytes | None]]:
        budget = _Budget(self.limits, len(self.data))
        stream = self._tar_stream(budget)
        try:
            for entry in _tar_entries(stream, budget):
                name = safe_name(entry.name)
                if entry.kind == "file" and name in wanted:
                    yield name, stream.read(entry.size)
        except (InputError, ValueError, zlib.error):
            return


def file_names(members: list[Member]) -> list[str]:
    """Member names a dataset could use (junk such as ``__MACOSX/`` dropped)."""
    return [m.name for m in members if not is_junk(m.name)]
