#!/usr/bin/env python3
"""Write the ``.env`` that docker-compose.yml takes its secrets from (``make compose-env``).

docker-compose.yml commits no secret: each one is a required variable (``${NAME:?...}``),
so ``docker compose up`` refuses to start until this file exists. The values are random
and the file is private (0600). An existing file keeps every value it has, because the
services keep the first ones (PostgreSQL sets its password when its volume is created,
and the web signs cookies with the key), so a new value would lock them out; a variable
it lacks, from a newer docker-compose.yml, is appended.

The names carry no ``ATELIER_`` prefix on purpose: ``flask run`` (``atelier web --dev``)
loads a ``.env`` it finds, and compose's secrets must not become the settings of a
development server started in the same folder. Standard library only, so it runs before
the virtual environment exists.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path


def _secret() -> str:
    """URL-safe, because some values go inside URLs (``postgresql://atelier:PASSWORD@``)."""
    return secrets.token_urlsafe(32)


# name -> (comment written above it, how to make a value)
VARIABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "SECRET_KEY": ("signs the web's session cookies (ATELIER_SECRET_KEY)", _secret),
    "WEBHOOK_SECRET": ("HMAC key of webhook signatures (ATELIER_WEBHOOK_SECRET)", _secret),
    "METRICS_TOKEN": ("GET /metrics needs Authorization: Bearer <this>", _secret),
    "POSTGRES_PASSWORD": ("PostgreSQL user atelier; fixed when its volume is created", _secret),
    "MINIO_ROOT_USER": (
        "MinIO root user, also Atelier's S3 access key",
        lambda: "atelier-" + secrets.token_hex(6),
    ),
    "MINIO_ROOT_PASSWORD": ("MinIO root password, also Atelier's S3 secret key", _secret),
    "FLOWER_BASIC_AUTH": (
        "Flower's login, user:password (http://127.0.0.1:5555)",
        lambda: "admin:" + _secret(),
    ),
}

OPTIONAL = """\
# Optional: the address people use (https makes the cookies Secure)
# PUBLIC_URL=https://atelier.example.org
# Optional: MinIO listens on 127.0.0.1 only, so for browsers on other machines the web
# streams downloads instead of redirecting to MinIO
# S3_DOWNLOADS=proxy
"""

_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def defined_names(text: str) -> set[str]:
    """Names a ``.env`` assigns (comments and blank lines skipped)."""
    return {m.group(1) for line in text.splitlines() if (m := _ASSIGNMENT.match(line))}


def _lines(names: list[str]) -> str:
    return "".join(f"# {VARIABLES[n][0]}\n{n}={VARIABLES[n][1]()}\n" for n in names)


def ensure_env(path: Path) -> list[str]:
    """Create ``path`` (0600) or append the variables it lacks; returns the names written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        missing = [n for n in VARIABLES if n not in defined_names(path.read_text())]
        if missing:
            with path.open("a") as handle:
                handle.write(f"\n# added by {Path(__file__).name}\n{_lines(missing)}")
        return missing
    os.fchmod(fd, 0o600)  # O_CREAT's mode is narrowed by the umask, never widened: be exact
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "# docker compose's secrets, made by deploy/make_env.py. Keep it private and out\n"
            "# of git; changing a value later locks services out of what they stored.\n"
            f"{_lines(list(VARIABLES))}{OPTIONAL}"
        )
    return list(VARIABLES)


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else ".env")
    existed = path.exists()
    written = ensure_env(path)
    if not existed:
        print(f"{path}: written with random secrets (mode 0600)")
    elif written:
        print(f"{path}: added {', '.join(written)}; existing values kept")
    else:
        print(f"{path}: complete; nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
