"""Who is asking. With ATELIER_AUTH=off (the embedded default) everyone is ``local``."""

from __future__ import annotations

LOCAL_OWNER = "local"


def current_owner() -> str:
    return LOCAL_OWNER
