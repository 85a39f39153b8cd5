"""Which Host names a server with ``ATELIER_AUTH=off`` answers to (DNS-rebinding guard).

Torch-, Flask- and Celery-free so that the launcher (``atelier web``/``atelier up``) and
the web app agree on one rule: the loopback names, plus the address the server binds.
"""

from __future__ import annotations

import socket
from collections.abc import MutableMapping

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def names_for_bind(host: str) -> list[str]:
    """The Host names people use to reach a server bound to ``host``.

    A wildcard bind is reachable under this machine's name and addresses; other names
    (a DNS alias, a reverse proxy's) must be listed in ``ATELIER_TRUSTED_HOSTS``.
    """
    host = host.strip().strip("[]").lower()
    if host not in WILDCARD_BINDS:
        return [host]
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    try:
        for *_, address in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(address[0]).lower())
    except OSError:
        pass  # a host without a resolvable name still has its loopback names
    return sorted(name for name in names if name)


def export_trusted_hosts(host: str, environ: MutableMapping[str, str]) -> None:
    """Set ``ATELIER_TRUSTED_HOSTS`` for a server bound to ``host`` unless it is set already.

    Only with auth off: a token-protected server behind a proxy answers to any Host.
    """
    if environ.get("ATELIER_TRUSTED_HOSTS") or environ.get("ATELIER_AUTH", "off") != "off":
        return
    names = dict.fromkeys([*LOOPBACK_HOSTS, *names_for_bind(host)])
    environ["ATELIER_TRUSTED_HOSTS"] = ",".join(names)
