"""Secrets that must be shared by processes: from settings, else made once under var/.

A single host (``atelier up``) needs no configuration; a cluster sets the variables so
every host signs and checks with the same key.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from shared.settings import Settings


def persistent_secret(settings: Settings, name: str) -> str:
    """``settings.<name>`` when set, else the content of ``var/<name>`` (created 0600)."""
    value = getattr(settings, name)
    if value:
        return value
    path = Path(settings.var_dir) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    for _ in range(100):  # a concurrent creator may not have written it yet
        text = path.read_text().strip()
        if text:
            return text
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty; delete it or set ATELIER_{name.upper()}")
