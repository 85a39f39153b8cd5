"""Settings read once from ``ATELIER_*`` environment variables.

Every field of :class:`Settings` is read from ``ATELIER_<FIELD NAME IN CAPITALS>``, so
the embedded launcher only has to export variables to its children, and a new setting
is one line here (plus a row in the README's table).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

MIB = 1024 * 1024
# batched optimisation (worker/batching.py): jobs one worker optimises together, and the
# longest it waits for a queued job to join its lead
BATCH_SIZE_MAX = 16
BATCH_WAIT_MS_MAX = 200
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration; see the README's configuration table."""

    var_dir: Path = Path("var")
    database_url: str = "sqlite:///var/atelier.db"
    redis_url: str | None = None
    storage_url: str = "file://var/storage"
    device: str = "auto"
    # auth: "off" (one local user) or "token" (Bearer tokens, a login for the pages)
    auth: str = "off"
    secret_key: str | None = None
    max_upload_bytes: int = 20 * MIB
    max_request_bytes: int = 64 * MIB
    max_pixels: int = 40_000_000
    max_size: int = 2048
    max_iterations: int = 5000
    # every image field refuses a long side more than this many times its short side
    max_aspect_ratio: int = 20
    soft_time_limit: int = 3600
    time_limit: int = 3900
    heartbeat_timeout: int = 60
    max_attempts: int = 3
    # SIGTERM: a worker takes no new job and waits this long for the running one, then
    # hands it back to the queue (not counted as an attempt); a second signal stops at once
    drain_seconds: int = 30
    # a style job saves its state this often inside a scale (and at every scale boundary),
    # a full/gradual fine-tune at the first epoch end this long after its last save, so a
    # requeued job resumes instead of starting over; 0: after every step / every epoch
    checkpoint_seconds: int = 30
    progress_interval: float = 1.0
    preview_interval: float = 3.0
    # quotas: per owner (queued + running, submits per minute) and for the whole queue
    max_active_per_owner: int = 20
    submit_rate_per_minute: int = 60
    max_queued_total: int = 1000
    # a sweep's child jobs (contents x styles x strengths x presets), at most 64 anywhere
    max_sweep_children: int = 64
    # webhooks: HMAC secret, and whether loopback/private targets are allowed
    webhook_secret: str | None = None
    webhook_allow_private: bool = False
    # results older than this many seconds are deleted (0 keeps them forever)
    result_ttl: int = 7 * 24 * 3600
    # storage folders with no job row are deleted once their newest file is this old
    orphan_grace_seconds: int = 3600
    # S3 storage (ATELIER_STORAGE_URL=s3://bucket/prefix); credentials: boto3's usual chain
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_url_expires: int = 900
    s3_downloads: str = "presigned"
    # the address people use (e.g. https://atelier.example.org); https makes cookies Secure
    public_url: str | None = None
    # Host names the server answers to with auth off (comma list); unset: loopback names
    # plus the address `atelier web`/`atelier up` binds
    trusted_hosts: str | None = None
    # when set, GET /metrics needs Authorization: Bearer <this token>
    metrics_token: str | None = None
    # modules (comma list) imported at start-up that register extra job kinds
    kind_modules: str | None = None
    # `atelier web`: gunicorn threads per process; an open event stream (or a submit
    # waiting under `Prefer: wait`) holds one for its whole life, so each process serves
    # at most max_streams of them and keeps the other threads for the API
    web_threads: int = 256
    max_streams: int = 240
    # a worker optimises up to this many queued style jobs of one shape as one batch
    # (1: one job at a time), waiting at most batch_wait_ms for one to join (none when
    # the queue is empty)
    batch_size: int = 1
    batch_wait_ms: int = 100

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
    def public_url_is_https(self) -> bool:
        """Cookies are marked Secure when people reach the service over https."""
        return bool(self.public_url) and self.public_url.lower().startswith("https://")

    @property
    def visibility_timeout(self) -> int:
        """Redis redelivers unacked tasks after this; it must outlast the hard limit."""
        return self.time_limit + 300

    def validate(self) -> Settings:
        """Refuse combinations that would silently misbehave; returns self."""
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError("ATELIER_DEVICE must be auto, cpu, cuda or cuda:N")
        if not self.soft_time_limit < self.time_limit:
            raise ValueError("ATELIER_SOFT_TIME_LIMIT must be below ATELIER_TIME_LIMIT")
        if self.auth not in ("off", "token"):
            raise ValueError("ATELIER_AUTH must be off or token")
        if self.max_attempts < 1:
            raise ValueError("ATELIER_MAX_ATTEMPTS must be at least 1")
        if self.drain_seconds < 0:
            raise ValueError("ATELIER_DRAIN_SECONDS must be 0 or more")
        if self.s3_downloads not in ("presigned", "proxy"):
            raise ValueError("ATELIER_S3_DOWNLOADS must be presigned or proxy")
        if self.max_sweep_children < 1:
            raise ValueError("ATELIER_MAX_SWEEP_CHILDREN must be at least 1")
        if self.max_aspect_ratio < 1:
            raise ValueError("ATELIER_MAX_ASPECT_RATIO must be at least 1")
        if not 0 <= self.checkpoint_seconds <= 3600:
            raise ValueError("ATELIER_CHECKPOINT_SECONDS must be from 0 to 3600")
        if not 1 <= self.web_threads <= 1024:
            raise ValueError("ATELIER_WEB_THREADS must be from 1 to 1024")
        if not 0 <= self.max_streams < self.web_threads:
            raise ValueError(
                "ATELIER_MAX_STREAMS must be 0 or more and below ATELIER_WEB_THREADS, so "
                "streams leave threads for the API"
            )
        if not 1 <= self.batch_size <= BATCH_SIZE_MAX:
            raise ValueError(f"ATELIER_BATCH_SIZE must be from 1 to {BATCH_SIZE_MAX}")
        if not 0 <= self.batch_wait_ms <= BATCH_WAIT_MS_MAX:
            raise ValueError(f"ATELIER_BATCH_WAIT_MS must be from 0 to {BATCH_WAIT_MS_MAX}")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("ATELIER_PUBLIC_URL must start with http:// or https://")
        return self


def _parse(name: str, kind: str, raw: str) -> object:
    env = f"ATELIER_{name.upper()}"
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"{env} must be a number, got {raw!r}") from None
    if kind == "bool":
        if raw.strip().lower() in TRUE | FALSE:
            return raw.strip().lower() in TRUE
        raise ValueError(f"{env} must be true or false, got {raw!r}")
    if kind == "Path":
        return Path(raw)
    return raw


def load_settings() -> Settings:
    """Build settings from the current environment (no caching; tests use this)."""
    values: dict[str, object] = {}
    for field in fields(Settings):
        raw = os.environ.get(f"ATELIER_{field.name.upper()}")
        if raw is not None and raw != "":
            values[field.name] = _parse(field.name, str(field.type), raw)
    var_dir = Path(values.get("var_dir", Settings.var_dir))
    values.setdefault("database_url", f"sqlite:///{var_dir}/atelier.db")
    values.setdefault("storage_url", f"file://{var_dir}/storage")
    return Settings(**values).validate()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return load_settings()
