"""Response headers and Host checks that every request goes through.

Two browser-side attacks need no bug in a view to work, so they are stopped here, once:

- Content sniffing and framing: every response says ``nosniff``; pages add a Content
  Security Policy that allows only this origin's files (no inline script, no framing) and
  a Referrer-Policy, so a job id in a URL does not travel to other sites.
- DNS rebinding: with ``ATELIER_AUTH=off`` anyone who can reach the port is the owner, and
  a web page can make a browser reach ``127.0.0.1`` under its own host name. Answering
  only to trusted Host names (``ATELIER_TRUSTED_HOSTS``; by default the loopback names,
  plus what ``atelier web``/``atelier up`` bind) closes that door.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

from flask import Flask, Response, request

from shared.errors import InputError
from shared.hosts import LOOPBACK_HOSTS
from shared.settings import Settings

REFERRER_POLICY = "same-origin"


def content_security_policy(settings: Settings) -> str:
    """Only this origin's files; images also from the S3 endpoint that downloads redirect to."""
    images = ["'self'", "data:", "blob:"]
    if settings.storage_url.startswith("s3://") and settings.s3_downloads == "presigned":
        endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        parts = urlsplit(endpoint or "")
        images.append(f"{parts.scheme}://{parts.netloc}" if parts.netloc else "https:")
    return "; ".join(
        (
            "default-src 'self'",
            f"img-src {' '.join(images)}",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def trusted_hosts(settings: Settings) -> frozenset[str] | None:
    """The Host names this server answers to; None: any (auth on and no list given)."""
    if settings.trusted_hosts:
        names = {name.strip().lower() for name in settings.trusted_hosts.split(",")}
        return frozenset(name for name in names if name)
    if settings.auth == "off":
        return frozenset(LOOPBACK_HOSTS)
    return None


_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]]+))(?::\d{1,5})?")


@lru_cache(maxsize=256)
def host_name(host_header: str) -> str:
    """``Host`` without its port, lower case, IPv6 literals without brackets; "" for a
    value that is not ``name[:port]`` or ``[v6][:port]`` (never trusted). Remembered for
    the few names a server is called by: every request asks."""
    match = _HOST.fullmatch(host_header.strip().lower())
    if match is None:
        return ""
    return match.group("v6") or match.group("name")


def check_host(allowed: frozenset[str] | None) -> None:
    """Refuse a request whose Host header names a host this server does not serve."""
    if allowed is None or "*" in allowed:
        return
    if host_name(request.environ.get("HTTP_HOST", "")) not in allowed:
        raise InputError(
            "Host: this server does not answer to that host name; add it to "
            "ATELIER_TRUSTED_HOSTS (comma list) on the server",
            field="Host",
            status=400,
            code="untrusted_host",
        )


def add_headers(response: Response, policy: str) -> Response:
    """``nosniff`` everywhere; CSP and Referrer-Policy on everything a browser renders."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Referrer-Policy", REFERRER_POLICY)
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = policy
        response.headers["X-Frame-Options"] = "DENY"
    return response


def safe_redirect_target(raw: str | None, fallback: str) -> str:
    """``raw`` when it is a path on this site, else ``fallback`` (no open redirect).

    Browsers drop tabs and newlines from URLs and read a backslash as a slash, so
    ``/%09/evil.example`` (a tab) and ``/%5Cevil.example`` (a backslash) both lead to
    ``//evil.example``: another host. Control characters and white space are dropped and
    backslashes turned into slashes first, then only a plain path (no scheme, no host)
    is accepted.
    """
    target = "".join(ch for ch in (raw or "") if ch.isprintable() and not ch.isspace())
    target = target.replace("\\", "/")
    parts = urlsplit(target)
    if not target.startswith("/") or target.startswith("//") or parts.scheme or parts.netloc:
        return fallback
    return target


def init_app(app: Flask, settings: Settings) -> None:
    allowed = trusted_hosts(settings)
    policy = content_security_policy(settings)
    app.before_request(lambda: check_host(allowed))
    app.after_request(lambda response: add_headers(response, policy))
