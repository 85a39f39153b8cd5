"""Job file storage. Keys look like ``jobs/<job id>/<name>``.

Two backends behind one small protocol, chosen by ``ATELIER_STORAGE_URL``:

- ``file://PATH`` — a local (or shared, e.g. NFS) directory. Every write goes to a
  temporary file that is renamed into place, so a reader never sees half a file.
- ``s3://BUCKET/PREFIX`` — any S3-compatible store (AWS, MinIO, …) through boto3; a PUT
  is atomic there too. ``ATELIER_S3_ENDPOINT_URL`` points it at MinIO; credentials come
  from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile,
  an instance role).

Callers never need a local path: they read through ``open`` and serve downloads either
by redirecting to ``download_url`` (S3, presigned) or by streaming ``open``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from shared.settings import Settings

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
S3_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys a call
JOB_ID = re.compile(r"[0-9a-f]{32}")
JobPrefix = tuple[str, float]  # (job id, newest modification of its files, epoch seconds)


class Storage(Protocol):
    """What web and worker need from a storage backend; nothing more."""

    def put_bytes(self, key: str, data: bytes) -> int: ...
    def put_file(self, key: str, source: str | os.PathLike[str]) -> int: ...
    def open(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def download_url(self, key: str, *, filename: str, content_type: str) -> str | None: ...
    def job_prefixes(self, *, page_size: int = 500) -> Iterator[list[JobPrefix]]: ...


# Raster images a browser may show in place; everything else (JSON, models, archives, and
# SVG, which can carry script) is downloaded, never rendered under this site's origin.
INLINE_CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})


def is_inline(content_type: str) -> bool:
    """Whether a stored file may be displayed by the browser rather than downloaded."""
    return content_type.split(";", 1)[0].strip().lower() in INLINE_CONTENT_TYPES


def content_disposition(filename: str, content_type: str) -> str:
    """``inline`` for raster images, ``attachment`` for every other stored file."""
    return f'{"inline" if is_inline(content_type) else "attachment"}; filename="{filename}"'


def job_key(job_id: str, name: str) -> str:
    """Storage key of a job file; refuses names that could escape the job's folder."""
    if not SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"unsafe file name {name!r}")
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"bad job id {job_id!r}")
    return f"jobs/{job_id}/{name}"


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"key {key!r} is not a relative storage key")
    return key


class LocalStorage:
    """Files under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def local_path(self, key: str) -> Path:
        """The file behind ``key`` (local backend only; not part of the protocol)."""
        path = (self.root / _check_key(key)).resolve()
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

    def download_url(self, key: str, *, filename: str, content_type: str) -> str | None:
        """None: a local file has no URL of its own, the web streams it."""
        return None

    def job_prefixes(self, *, page_size: int = 500) -> Iterator[list[JobPrefix]]:
        """Every ``jobs/<id>/`` folder with the newest mtime in it, ``page_size`` at a time.

        The folder names are read once (cheap) and only a page at a time is stat'ed, so a
        caller may delete the folders of one page before asking for the next.
        """
        jobs = self.root / "jobs"
        try:
            names = sorted(n for n in os.listdir(jobs) if JOB_ID.fullmatch(n))
        except FileNotFoundError:
            return
        for start in range(0, len(names), page_size):
            page = [(n, _newest_mtime(jobs / n)) for n in names[start : start + page_size]]
            yield [(job_id, newest) for job_id, newest in page if newest is not None]


class S3Storage:
    """Objects under ``s3://bucket/prefix``; presigned GET URLs for downloads.

    ``public_endpoint_url`` signs download URLs for the address clients use when it
    differs from the one the servers use (MinIO at ``http://minio:9000`` inside compose,
    ``http://localhost:9000`` from a browser). ``presign=False`` makes the web stream
    files itself instead (the store need not be reachable by clients then).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        url_expires: int = 900,
        presign: bool = True,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url_expires = url_expires
        self.presign = presign
        self.client = _s3_client(endpoint_url, region)
        public = public_endpoint_url or endpoint_url
        self.signer = self.client if public == endpoint_url else _s3_client(public, region)

    def _name(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> int:
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        return len(data)

    def put_file(self, key: str, source: str | os.PathLike[str]) -> int:
        self.client.upload_file(os.fspath(source), self.bucket, self._name(key))
        return os.path.getsize(source)

    def open(self, key: str) -> BinaryIO:
        """A stream of the object; FileNotFoundError when it is missing (like a local file)."""
        from botocore.exceptions import ClientError

        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no object {key!r} in s3://{self.bucket}") from None
            raise
        return reply["Body"]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def delete_prefix(self, prefix: str) -> None:
        """The object ``prefix`` itself and everything under ``prefix/`` (never ``prefix*``)."""
        name = self._name(prefix.rstrip("/"))
        keys = [name]
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=name + "/"
        )
        for page in pages:
            keys.extend(item["Key"] for item in page.get("Contents", []))
        for start in range(0, len(keys), S3_DELETE_BATCH):
            batch = keys[start : start + S3_DELETE_BATCH]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )

    def job_prefixes(self, *, page_size: int = 500) -> Iterator[list[JobPrefix]]:
        """Every ``jobs/<id>/`` prefix with its newest LastModified, ``page_size`` at a time.

        Keys come sorted, so a job's objects are contiguous: a job is complete when a key
        of another job (or the end of the listing) follows. Listing continues after the
        last key seen, so deleting the prefixes of one page does not disturb the next.
        """
        base = self._name("jobs") + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base
        )
        done: list[JobPrefix] = []
        current: str | None = None
        newest = 0.0
        for listing in pages:
            for item in listing.get("Contents", []):
                job_id, slash, _ = item["Key"][len(base) :].partition("/")
                if not slash or not JOB_ID.fullmatch(job_id):
                    continue
                if job_id != current:
                    if current is not None:
                        done.append((current, newest))
                    current, newest = job_id, 0.0
                newest = max(newest, item["LastModified"].timestamp())
            while len(done) >= page_size:
                yield done[:page_size]
                done = done[page_size:]
        if current is not None:
            done.append((current, newest))
        for start in range(0, len(done), page_size):
            yield done[start : start + page_size]

    def download_url(self, key: str, *, filename: str, content_type: str) -> str | None:
        """A presigned GET that serves the object under ``filename`` with ``content_type``."""
        if not self.presign:
            return None
        return self.signer.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._name(key),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": content_disposition(filename, content_type),
            },
            ExpiresIn=self.url_expires,
        )


def _newest_mtime(folder: Path) -> float | None:
    """The latest mtime of a folder and everything in it; None when it vanished meanwhile."""
    try:
        newest = folder.stat().st_mtime
        for parent, _dirs, files in os.walk(folder):
            for name in files:
                try:
                    newest = max(newest, os.stat(os.path.join(parent, name)).st_mtime)
                except FileNotFoundError:
                    continue
            newest = max(newest, os.stat(parent).st_mtime)
    except FileNotFoundError:
        return None
    return newest


def _is_missing(exc: Exception) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code")) in {"404", "NoSuchKey", "NotFound"}


_client_lock = threading.Lock()


@lru_cache(maxsize=8)
def _s3_client_for(pid: int, endpoint_url: str | None, region: str):
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
    )
    # boto3 sessions are not thread-safe; a client, once made, is
    with _client_lock:
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )


def _s3_client(endpoint_url: str | None, region: str):
    """One client per process (keyed by pid: a client must not cross a fork)."""
    return _s3_client_for(os.getpid(), endpoint_url, region)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, prefix); ValueError for anything else."""
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(
            f"ATELIER_STORAGE_URL {url!r}: the bucket name must be 3-63 lower-case letters, "
            "digits, dots or dashes (s3://bucket/prefix)"
        )
    return bucket, prefix.strip("/")


def open_storage(url: str, settings: Settings | None = None) -> Storage:
    """Storage for an ``ATELIER_STORAGE_URL``; S3 options come from ``settings`` (or the env)."""
    if url.startswith("file://"):
        return LocalStorage(url[len("file://") :])
    if url.startswith("s3://"):
        if settings is None:
            from shared.settings import get_settings

            settings = get_settings()
        bucket, prefix = parse_s3_url(url)
        return S3Storage(
            bucket,
            prefix,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            url_expires=settings.s3_url_expires,
            presign=settings.s3_downloads == "presigned",
        )
    raise ValueError(
        f"unsupported ATELIER_STORAGE_URL {url!r}: use file://PATH or s3://bucket/prefix"
    )
