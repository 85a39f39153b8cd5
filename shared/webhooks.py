"""Webhook targets, payloads and signatures.

A receiver checks ``Atelier-Signature: t=<unix time>,v1=<hex>`` where the hex is
HMAC-SHA256(secret, "<t>.<raw body>"), and rejects old timestamps to stop replays.
Targets on loopback, private, link-local or reserved addresses are refused (checked at
submit and again before each delivery, against DNS rebinding) unless
ATELIER_WEBHOOK_ALLOW_PRIVATE is set.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared.db import session_scope
from shared.errors import InputError
from shared.models import Job
from shared.secrets import persistent_secret
from shared.settings import Settings
from shared.timeutil import isoformat

log = logging.getLogger(__name__)
TIMEOUT = 5

EVENTS = ("start", "completed")
MAX_URL = 2000


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def check_target(url: str, *, allow_private: bool) -> None:
    """Raise InputError (field ``webhook``) unless ``url`` is a deliverable public target."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL:
        raise InputError("webhook must be an http(s) URL with a host", field="webhook")
    if parts.username or parts.password:
        raise InputError("webhook must not carry credentials in the URL", field="webhook")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = _addresses(parts.hostname, port)
    except (OSError, ValueError):
        raise InputError(
            f"webhook host {parts.hostname!r} does not resolve", field="webhook"
        ) from None
    if allow_private:
        return
    for address in addresses:
        if not address.is_global or address.is_multicast:
            raise InputError(
                f"webhook targets on loopback or private networks are refused ({address}); "
                "an operator can allow them with ATELIER_WEBHOOK_ALLOW_PRIVATE=true",
                field="webhook",
            )


def parse_events(raw: str | None) -> str:
    """Comma list of events, default both; returns the normalised list as a string."""
    if raw is None or raw.strip() == "":
        return ",".join(EVENTS)
    events = [e.strip() for e in raw.split(",") if e.strip()]
    unknown = [e for e in events if e not in EVENTS]
    if unknown or not events:
        raise InputError(
            f"webhook_events must be a comma list of {', '.join(EVENTS)}", field="webhook_events"
        )
    return ",".join(dict.fromkeys(events))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does (also used by the tests)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    expected = sign(secret, int(fields.get("t", "0")), body)
    return hmac.compare_digest(expected, header)


def payload(job: Job, event: str) -> dict[str, Any]:
    outputs = [f.name for f in job.files if f.role == "result"]
    return {
        "event": event,
        "job": {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "error": {"code": job.error_code, "message": job.error_message}
            if job.error_code
            else None,
            "created_at": isoformat(job.created_at),
            "started_at": isoformat(job.started_at),
            "finished_at": isoformat(job.finished_at),
            "outputs": [{"name": n, "url": f"/api/v1/jobs/{job.id}/files/{n}"} for n in outputs],
            "urls": {"self": f"/api/v1/jobs/{job.id}"},
        },
    }


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


DELIVERED, FAILED, REFUSED = "delivered", "failed", "refused"


def deliver(settings: Settings, url: str, body: bytes, event: str, delivery: str) -> str:
    """POST once: DELIVERED on a 2xx answer, FAILED (worth retrying) or REFUSED (never)."""
    try:
        check_target(url, allow_private=settings.webhook_allow_private)
    except InputError as exc:
        log.warning("webhook %s refused: %s", urlsplit(url).hostname, exc.message)
        return REFUSED
    timestamp = int(time.time())
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "atelier-webhook/1",
            "Atelier-Event": event,
            "Atelier-Delivery": delivery,
            "Atelier-Signature": sign(
                persistent_secret(settings, "webhook_secret"), timestamp, body
            ),
        },
    )
    try:
        with _opener.open(request, timeout=TIMEOUT) as response:
            return DELIVERED if 200 <= response.status < 300 else FAILED
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.info("webhook delivery %s failed: %s", delivery, exc)
        return FAILED


def wants(job: Job, event: str) -> bool:
    return bool(job.webhook_url) and event in (job.webhook_events or "").split(",")


@dataclass(frozen=True)
class Attempt:
    """One delivery try: what was sent where, and how it went."""

    outcome: str
    url: str
    body: bytes
    delivery: str


def notify_once(settings: Settings, job_id: str, event: str) -> Attempt | None:
    """Send ``event`` for the job if it asked for it (None when it did not)."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or not wants(job, event):
            return None
        url, body = job.webhook_url, encode(payload(job, event))
    delivery = uuid.uuid4().hex
    return Attempt(deliver(settings, url, body, event, delivery), url, body, delivery)
