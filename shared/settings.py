"""Settings read once from ``ATELIER_*`` environment variables.

Every process (web, worker, CLI) builds the same :class:`Settings` from its
environment, so the embedded launcher only has to export variables to its children.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

MIB = 1024 * 1024


def _env(name: str, default: str | None) -> str | None:
    value = os.environ.get(f"ATELIER_{name}")
    return default if value is None or value == "" else value


def _env_int(name: str, default: int) -> int:
    raw = _env(name, None)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"ATELIER_{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration; see the README's configuration table."""

    var_dir: Path = Path("var")
    database_url: str = "sqlite:///var/atelier.db"
    redis_url: str | None = None
    storage_url: str = "file://var/storage"
    device: str = "auto"
    auth: str = "off"
    max_upload_bytes: int = 20 * MIB
    max_request_bytes: int = 64 * MIB
    max_pixels: int = 40_000_000
    max_size: int = 2048
    max_iterations: int = 5000
    soft_time_limit: int = 3600
    time_limit: int = 3900
    heartbeat_timeout: int = 60
    progress_interval: float = 1.0
    preview_interval: float = 3.0
    # S3 storage (ATELIER_STORAGE_URL=s3://bucket/prefix); credentials: boto3's usual chain
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_url_expires: int = 900
    s3_downloads: str = "presigned"

    @property
    def broker_url(self) -> str:
        """The Redis URL every process must agree on; unset only before ``atelier up``."""
        if not self.redis_url:
            raise RuntimeError(
                "ATELIER_REDIS_URL is not set: start everything with `atelier up` (it runs an "
                "embedded Redis) or point ATELIER_REDIS_URL at a Redis server"
            )
        return self.redis_url

    @property
    def visibility_timeout(self) -> int:
        """Redis redelivers unacked tasks after this; it must outlast the hard limit."""
        return self.time_limit + 300


def load_settings() -> Settings:
    """Build settings from the current environment (no caching; tests use this)."""
    var_dir = Path(_env("VAR_DIR", "var"))
    defaults = {f.name: f.default for f in fields(Settings)}
    settings = Settings(
        var_dir=var_dir,
        database_url=_env("DATABASE_URL", f"sqlite:///{var_dir}/atelier.db"),
        redis_url=_env("REDIS_URL", None),
        storage_url=_env("STORAGE_URL", f"file://{var_dir}/storage"),
        device=_env("DEVICE", "auto"),
        auth=_env("AUTH", "off"),
        max_upload_bytes=_env_int("MAX_UPLOAD_BYTES", defaults["max_upload_bytes"]),
        max_request_bytes=_env_int("MAX_REQUEST_BYTES", defaults["max_request_bytes"]),
        max_pixels=_env_int("MAX_PIXELS", defaults["max_pixels"]),
        max_size=_env_int("MAX_SIZE", defaults["max_size"]),
        max_iterations=_env_int("MAX_ITERATIONS", defaults["max_iterations"]),
        soft_time_limit=_env_int("SOFT_TIME_LIMIT", defaults["soft_time_limit"]),
        time_limit=_env_int("TIME_LIMIT", defaults["time_limit"]),
        heartbeat_timeout=_env_int("HEARTBEAT_TIMEOUT", defaults["heartbeat_timeout"]),
        progress_interval=float(_env("PROGRESS_INTERVAL", "1.0")),
        preview_interval=float(_env("PREVIEW_INTERVAL", "3.0")),
        s3_endpoint_url=_env("S3_ENDPOINT_URL", None),
        s3_public_endpoint_url=_env("S3_PUBLIC_ENDPOINT_URL", None),
        s3_region=_env("S3_REGION", defaults["s3_region"]),
        s3_url_expires=_env_int("S3_URL_EXPIRES", defaults["s3_url_expires"]),
        s3_downloads=_env("S3_DOWNLOADS", defaults["s3_downloads"]),
    )
    if settings.device not in ("auto", "cpu", "cuda") and not settings.device.startswith("cuda:"):
        raise ValueError("ATELIER_DEVICE must be auto, cpu, cuda or cuda:N")
    if settings.s3_downloads not in ("presigned", "proxy"):
        raise ValueError("ATELIER_S3_DOWNLOADS must be presigned or proxy")
    if not settings.soft_time_limit < settings.time_limit:
        raise ValueError("ATELIER_SOFT_TIME_LIMIT must be below ATELIER_TIME_LIMIT")
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return load_settings()
