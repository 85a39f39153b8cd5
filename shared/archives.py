"""Reading uploaded dataset archives (.zip, .tar, .tar.gz) without trusting them.

Nothing here writes a member to disk: members are listed, checked and read into memory,
so a hostile name (``/etc/passwd``, ``../../x``, a symlink) has nowhere to land. The
checks still refuse such archives outright, with a message, because an archive that
tries them is not a dataset anyone meant to send:

* names: no absolute paths (``/x``, ``C:\\x``), no ``..`` component, no NUL;
* members: regular files and folders only (no symlinks, hard links, devices, sparse files),
  no encrypted zip entries, no duplicate names;
* caps: file count, each member's size, total unpacked size and the unpacked/packed ratio
  (a zip bomb declares sizes its compressed data cannot honestly hold).

Sizes are the ones the archive declares, checked before anything is decompressed; when a
member is read, no more than its declared size is accepted.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from shared.errors import InputError

MIB = 1024 * 1024
FIELD = "dataset"
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what an archive may unpack to; the defaults suit image-folder datasets."""

    max_files: int = 10_000
    max_member_bytes: int = 64 * MIB
    max_total_bytes: int = 1024 * MIB
    max_ratio: float = 100.0


@dataclass(frozen=True)
class Member:
    name: str  # normalised relative POSIX path
    size: int  # declared unpacked size in bytes


def _refuse(message: str, *, status: int = 400, code: str = "invalid") -> InputError:
    return InputError(f"dataset: {message}", field=FIELD, status=status, code=code)


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
    """Counts members and declared bytes against the limits as the listing proceeds."""

    def __init__(self, limits: ArchiveLimits, packed_bytes: int) -> None:
        self.limits = limits
        self.packed = max(packed_bytes, 1)
        self.files = 0
        self.total = 0
        self.seen: set[str] = set()

    def add(self, name: str, size: int, packed_size: int | None) -> None:
        lim = self.limits
        if name in self.seen:
            raise _refuse(f"member {name!r} appears twice; an archive must not repeat names")
        self.seen.add(name)
        self.files += 1
        self.total += size
        if self.files > lim.max_files:
            raise _refuse(
                f"more than {lim.max_files} files; split the dataset or sample it",
                status=413,
                code="too_large",
            )
        if size > lim.max_member_bytes:
            raise _refuse(
                f"member {name!r} unpacks to {size} bytes; the limit per file is "
                f"{lim.max_member_bytes}",
                status=413,
                code="too_large",
            )
        if self.total > lim.max_total_bytes:
            raise _refuse(
                f"unpacks to more than {lim.max_total_bytes} bytes; upload a smaller dataset",
                status=413,
                code="too_large",
            )
        if packed_size is not None and size > 1024 and size / max(packed_size, 1) > lim.max_ratio:
            raise _refuse(
                f"member {name!r} compresses {size / max(packed_size, 1):.0f}:1, above the "
                f"{lim.max_ratio:.0f}:1 limit (a decompression bomb?)",
                status=413,
                code="too_large",
            )
        if self.total > 1024 * 1024 and self.total / self.packed > lim.max_ratio:
            raise _refuse(
                f"the archive unpacks to {self.total / self.packed:.0f} times its size, above "
                f"the {lim.max_ratio:.0f}:1 limit (a decompression bomb?)",
                status=413,
                code="too_large",
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
        except InputError:
            raise
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise _refuse(f"the {self.format} archive is corrupt or truncated ({exc})") from None

    def _list_zip(self) -> list[Member]:
        budget = _Budget(self.limits, len(self.data))
        members = []
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            for info in archive.infolist():
                name = safe_name(info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise _refuse(f"member {info.filename!r} is a symbolic link; links are refused")
                if info.is_dir() or not name:
                    continue
                if info.flag_bits & 0x1:
                    raise _refuse(f"member {info.filename!r} is encrypted; upload it unencrypted")
                budget.add(name, info.file_size, info.compress_size)
                members.append(Member(name, info.file_size))
        return members

    def _list_tar(self) -> list[Member]:
        budget = _Budget(self.limits, len(self.data))
        members = []
        with self._open_tar() as archive:
            while (info := archive.next()) is not None:  # checked before seeking past its data
                name = safe_name(info.name)
                if info.issym() or info.islnk():
                    raise _refuse(f"member {info.name!r} is a link; links are refused")
                if info.isdir() or not name:
                    continue
                if not info.isfile() or info.issparse():
                    raise _refuse(f"member {info.name!r} is not a regular file; remove it")
                budget.add(name, info.size, None)
                members.append(Member(name, info.size))
        return members

    def _open_tar(self) -> tarfile.TarFile:
        mode = "r:gz" if self.format == "tar.gz" else "r:"
        return tarfile.open(fileobj=io.BytesIO(self.data), mode=mode)

    def read(self, wanted: set[str]) -> Iterator[tuple[str, bytes | None]]:
        """(name, bytes) for each wanted member in archive order; None when it is unreadable.

        A member whose data is damaged (bad CRC, truncated) yields None rather than
        failing the whole dataset; the caller counts those.
        """
        if self.format == "zip":
            yield from self._read_zip(wanted)
        else:
            yield from self._read_tar(wanted)

    def _read_zip(self, wanted: set[str]) -> Iterator[tuple[str, bytes | None]]:
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            for info in archive.infolist():
                name = safe_name(info.filename)
                if name not in wanted or info.is_dir():
                    continue
                try:
                    with archive.open(info) as handle:
                        data = handle.read(info.file_size + 1)
                    yield name, data if len(data) == info.file_size else None
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError):
                    yield name, None

    def _read_tar(self, wanted: set[str]) -> Iterator[tuple[str, bytes | None]]:
        try:
            with self._open_tar() as archive:
                while (info := archive.next()) is not None:
                    name = safe_name(info.name)
                    if name not in wanted or not info.isfile():
                        continue
                    handle = archive.extractfile(info)
                    data = handle.read(info.size + 1) if handle else b""
                    yield name, data if len(data) == info.size else None
        except (tarfile.TarError, EOFError, OSError):
            return


def file_names(members: list[Member]) -> list[str]:
    """Member names a dataset could use (junk such as ``__MACOSX/`` dropped)."""
    return [m.name for m in members if not is_junk(m.name)]
