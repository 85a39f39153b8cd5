"""Webhook targets, payloads, signatures, the cpu-queue enqueue and one delivery attempt.

A receiver checks ``Atelier-Signature: t=<unix time>,v1=<hex>`` where the hex is
HMAC-SHA256(secret, "<t>.<raw body>"), and rejects old timestamps to stop replays.

Targets are checked at submit and again at each delivery, unless
ATELIER_WEBHOOK_ALLOW_PRIVATE is set. A delivery resolves the name once and connects to
exactly the address it checked (Host, TLS SNI and the certificate check keep the name),
so a name that answers a public address to the check and 127.0.0.1 to the connection
(DNS rebinding) reaches nothing inside. One attempt, from resolving to the status line,
has DEADLINE seconds in all: a target that drips a byte at a time is cut off.

Deliveries never run where they are decided: ``enqueue`` snapshots the job and publishes
a task on the ``cpu`` queue, which worker/tasks.py runs and retries.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from shared.db import session_scope
from shared.errors import InputError
from shared.models import Job
from shared.queue import CPU_QUEUE, DELIVER_WEBHOOK_TASK
from shared.secrets import persistent_secret
from shared.settings import Settings
from shared.timeutil import isoformat

log = logging.getLogger(__name__)

DEADLINE = 10.0  # seconds for one whole attempt: resolve, connect, TLS, send, status + headers
DEFAULT_EVENTS = ("start", "completed")
# opt-in: throttled progress, and "output" when a new preview is stored (worker/progress.py)
EVENTS = (*DEFAULT_EVENTS, "progress", "output")
# seconds between two progress (or two output) webhooks of one job: a receiver gets a
# handful a minute, not one per progress write
PROGRESS_INTERVAL = 5.0
MAX_URL = 2000
DELIVERED, FAILED, REFUSED = "delivered", "failed", "refused"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# getaddrinfo's shape: tests pass a stub that answers like a DNS server would
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

# IPv6 ranges that carry, or translate to, an IPv4 address the checks would not see, and
# ranges Python's is_global still calls global (it follows IANA, not what a router does)
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
# IETF protocol assignments: Python 3.11 calls most of this block global, but it holds
# cloud metadata addresses (192.0.0.192) and other special-purpose hosts.
IETF_PROTOCOL = ipaddress.IPv4Network("192.0.0.0/24")


# --- targets -----------------------------------------------------------------------------


class UnresolvedHost(InputError):
    """The name did not resolve: refused at submit, but a delivery tries again later."""


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to ``addresses`` only, speak to ``host`` (Host, SNI, cert)."""

    tls: bool
    host: str
    port: int
    path: str
    addresses: tuple[IPAddress, ...]


def refusal(address: IPAddress) -> str | None:
    """Why a delivery must not go to ``address``; None for a public unicast address."""
    if address.is_loopback or address.is_unspecified:
        return "a loopback or unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv4Address) and address in IETF_PROTOCOL:
        return "a special-purpose address (192.0.0.0/24)"
    if isinstance(address, ipaddress.IPv6Address):
        reason = _ipv6_refusal(address)
        if reason:
            return reason
    if not address.is_global or address.is_private or address.is_reserved:
        return "a private or reserved address"
    return None


def _ipv6_refusal(address: ipaddress.IPv6Address) -> str | None:
    """IPv6 forms that reach an IPv4 host, or a site, by another road."""
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped address"
    if address in IPV4_COMPATIBLE:
        return "an IPv4-compatible address"
    if any(address in net for net in NAT64):
        return "a NAT64 address"
    if address in UNIQUE_LOCAL or address.is_site_local:
        return "a unique-local or site-local address"
    embedded = address.sixtofour or (address.teredo[1] if address.teredo else None)
    if embedded is not None and refusal(embedded):
        return f"a tunnel to {embedded}"
    return None


def _resolve(host: str, port: int, resolver: Resolver | None) -> tuple[IPAddress, ...]:
    """The one lookup of a check or a delivery (``socket.getaddrinfo`` unless injected)."""
    infos = (resolver or socket.getaddrinfo)(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise OSError(f"{host} has no address")
    return tuple(dict.fromkeys(addresses))


def resolve_target(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> Target:
    """Check ``url`` and pin its addresses; InputError (field ``webhook``) when refused.

    Every address the name has must be allowed: a name that mixes public and internal
    answers is refused rather than tried until it lands inside.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL:
        raise InputError("webhook must be an http(s) URL with a host", field="webhook")
    if parts.username or parts.password:
        raise InputError("webhook must not carry credentials in the URL", field="webhook")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InputError("webhook has an invalid port", field="webhook") from None
    try:
        addresses = _resolve(parts.hostname, port, resolver)
    except (OSError, ValueError, UnicodeError):
        raise UnresolvedHost(
            f"webhook host {parts.hostname!r} does not resolve", field="webhook"
        ) from None
    if not allow_private:
        _refuse_internal(addresses)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme == "https", parts.hostname, port, path, addresses)


def _refuse_internal(addresses: Sequence[IPAddress]) -> None:
    for address in addresses:
        reason = refusal(address)
        if reason:
            raise InputError(
                f"webhook targets on loopback or private networks are refused ({address} "
                f"is {reason}); an operator can allow them with "
                "ATELIER_WEBHOOK_ALLOW_PRIVATE=true",
                field="webhook",
            )


def check_target(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> None:
    """Raise InputError (field ``webhook``) unless ``url`` is a deliverable public target."""
    resolve_target(url, allow_private=allow_private, resolver=resolver)


def parse_events(raw: str | None) -> str:
    """Comma list of events, default start and completed; returns the normalised list."""
    if raw is None or raw.strip() == "":
        return ",".join(DEFAULT_EVENTS)
    events = [e.strip() for e in raw.split(",") if e.strip()]
    unknown = [e for e in events if e not in EVENTS]
    if unknown or not events:
        raise InputError(
            f"webhook_events must be a comma list of {', '.join(EVENTS)}", field="webhook_events"
        )
    return ",".join(dict.fromkeys(events))


# --- payloads and signatures -------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does (also used by the tests)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    expected = sign(secret, int(fields.get("t", "0")), body)
    return hmac.compare_digest(expected, header)


def _progress(job: Job) -> dict[str, Any]:
    total = job.progress_total or 0
    return {
        "current": job.progress_current,
        "total": total,
        "percent": round(100.0 * job.progress_current / total, 1) if total else 0.0,
        "stage": job.progress_stage,
        "eta_seconds": job.eta_seconds,
        "loss": job.progress_loss,
    }


def payload(job: Job, event: str) -> dict[str, Any]:
    outputs = [f.name for f in job.files if f.role == "result"]
    preview = next((f.name for f in job.files if f.role == "preview"), None)
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
            "progress": _progress(job),
            "preview": {"url": f"/api/v1/jobs/{job.id}/files/{preview}", "step": job.preview_step}
            if preview
            else None,
            "urls": {"self": f"/api/v1/jobs/{job.id}"},
        },
    }


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def wants(job: Job, event: str) -> bool:
    return bool(job.webhook_url) and event in (job.webhook_events or "").split(",")


# --- enqueue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One event to POST: the job as it was when the event happened, under one id.

    The body is taken when the event happens, not when the cpu queue gets to it: a
    ``start`` sent after the job ended still says ``processing``, and every retry of a
    delivery sends the same bytes under the same ``Atelier-Delivery`` id.
    """

    url: str
    body: bytes
    event: str
    id: str

    def task_args(self) -> list[Any]:
        """The delivery task's arguments (url, body, event, delivery id, tries before)."""
        return [self.url, self.body.decode(), self.event, self.id, 0]


def snapshot(settings: Settings, job_id: str, event: str) -> Delivery | None:
    """The delivery of ``event``, or None when the job did not ask for it."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or not wants(job, event):
            return None
        return Delivery(job.webhook_url, encode(payload(job, event)), event, uuid.uuid4().hex)


class Publisher(Protocol):
    """What ``enqueue`` needs of a Celery app: the web's client or the worker's app."""

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> Any: ...


def enqueue(settings: Settings, celery: Publisher, job_id: str, event: str) -> Delivery | None:
    """Publish ``event``'s delivery on the cpu queue; nothing is sent from the caller.

    Called on a job's thread and in web requests, so it only reads the row and publishes
    a message. With the broker down the event is logged and dropped: the job must still
    finish, and a broker that is down has stopped the workers that would deliver it too.
    """
    delivery = snapshot(settings, job_id, event)
    if delivery is None:
        return None
    try:
        celery.send_task(
            DELIVER_WEBHOOK_TASK, args=delivery.task_args(), queue=CPU_QUEUE, retry=False
        )
    except Exception:  # broker unreachable: see the docstring
        log.warning(
            "could not queue the %s webhook of job %s; it is not sent", event, job_id, exc_info=True
        )
    return delivery


# --- one delivery attempt ----------------------------------------------------------------


class Deadline:
    """A point in time that every blocking step of one attempt counts down to."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the webhook delivery ran past its deadline")
        return left


class _DeadlineReader(io.RawIOBase):
    """Reads of the response, each allowed only the time left (a per-read timeout alone
    lets a target that sends a byte now and then hold the attempt for ever)."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        super().__init__()
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(self._deadline.remaining())
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """The socket http.client sees: sends and the response file keep to the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock, self._deadline = sock, deadline

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._sock.settimeout(self._deadline.remaining())
            view = view[self._sock.send(view) :]

    def makefile(self, _mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        self._sock.close()


def _open_socket(target: Target, deadline: Deadline) -> socket.socket:
    """TCP to the first checked address that answers, never to the name (no 2nd lookup)."""
    error: OSError = OSError(f"{target.host} has no address")
    for address in target.addresses:
        try:
            return socket.create_connection(
                (str(address), target.port), timeout=deadline.remaining()
            )
        except OSError as exc:
            error = exc
    raise error


def _start_tls(sock: socket.socket, target: Target, deadline: Deadline) -> socket.socket:
    """TLS with SNI and certificate checks against the URL's name, not the pinned address."""
    try:
        sock.settimeout(deadline.remaining())
        return ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
    except BaseException:
        sock.close()
        raise


class PinnedConnection(http.client.HTTPConnection):
    """HTTP or HTTPS to one of the target's checked addresses, within a deadline."""

    def __init__(self, target: Target, deadline: Deadline) -> None:
        super().__init__(target.host, target.port, timeout=deadline.remaining())
        self.default_port = 443 if target.tls else 80  # Host gets ":port" only off it
        self._target, self._deadline = target, deadline

    def connect(self) -> None:
        sock = _open_socket(self._target, self._deadline)
        if self._target.tls:
            sock = _start_tls(sock, self._target, self._deadline)
        self.sock = _DeadlineSocket(sock, self._deadline)


def _post(target: Target, body: bytes, headers: dict[str, str], deadline: Deadline) -> int:
    """POST and return the status; the body of the answer is not read, nor redirects
    followed (a public target must not bounce a delivery inside)."""
    connection = PinnedConnection(target, deadline)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.close()
        return response.status
    finally:
        connection.close()


def _headers(settings: Settings, body: bytes, event: str, delivery: str) -> dict[str, str]:
    secret = persistent_secret(settings, "webhook_secret")
    return {
        "Content-Type": "application/json",
        "User-Agent": "atelier-webhook/1",
        "Atelier-Event": event,
        "Atelier-Delivery": delivery,
        "Atelier-Signature": sign(secret, int(time.time()), body),
    }


def deliver(
    settings: Settings,
    url: str,
    body: bytes,
    event: str,
    delivery: str,
    *,
    resolver: Resolver | None = None,
) -> str:
    """POST once: DELIVERED on a 2xx answer, FAILED (worth retrying) or REFUSED (never).

    The attempt takes at most DEADLINE seconds plus what the resolver blocks for (a
    system lookup cannot be interrupted; the delivery task's time limit caps that).
    """
    deadline = Deadline(DEADLINE)
    try:
        target = resolve_target(
            url, allow_private=settings.webhook_allow_private, resolver=resolver
        )
    except UnresolvedHost as exc:  # DNS may answer on the next try
        log.info("webhook delivery %s failed: %s", delivery, exc.message)
        return FAILED
    except InputError as exc:
        log.warning("webhook %s refused: %s", urlsplit(url).hostname, exc.message)
        return REFUSED
    try:
        status = _post(target, body, _headers(settings, body, event, delivery), deadline)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        log.info("webhook delivery %s failed: %s", delivery, exc)
        return FAILED
    return DELIVERED if 200 <= status < 300 else FAILED
