"""Job file storage. Keys look like ``jobs/<job id>/<name>``.

Only a local directory backend exists today (``file://PATH``); every write goes to a
temporary file that is renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Storage(Protocol):
    def put_bytes(self, key: str, data: bytes) -> int: ...
    def put_file(self, key: str, source: str | os.PathLike[str]) -> int: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...


def job_key(job_id: str, name: str) -> str:
    """Storage key of a job file; refuses names that could escape the job's folder."""
    if not SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"unsafe file name {name!r}")
    if not re.fullmatch(r"[0-9a-f]{32}", job_id):
        raise ValueError(f"bad job id {job_id!r}")
    return f"jobs/{job_id}/{name}"


class LocalStorage:
    """Files under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def local_path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key {key!r} escapes the storage root")
        return path

    def _atomic_write(self, key: str, write) -> int:
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target.stat().st_size

    def put_bytes(self, key: str, data: bytes) -> int:
        return self._atomic_write(key, lambda handle: handle.write(data))

    def put_file(self, key: str, source: str | os.PathLike[str]) -> int:
        def copy(handle: BinaryIO) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, handle)

        return self._atomic_write(key, copy)

    def open(self, key: str) -> BinaryIO:
        return open(self.local_path(key), "rb")

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        path = self.local_path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file():
            path.unlink(missing_ok=True)


def open_storage(url: str) -> Storage:
    """Storage for an ``ATELIER_STORAGE_URL``."""
    if url.startswith("file://"):
        return LocalStorage(url[len("file://") :])
    raise ValueError(
        f"unsupported ATELIER_STORAGE_URL {url!r}: use file://PATH (S3 support is not built yet)"
    )
