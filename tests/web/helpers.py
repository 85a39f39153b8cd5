"""Job rows in any state, made directly in the database, for page tests that need no worker."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import update

from shared.db import session_scope
from shared.jobs import StoredFile, add_job, new_job_id
from shared.models import Job
from shared.settings import Settings
from shared.storage import job_key, open_storage
from shared.timeutil import utcnow


def csrf_token(client) -> str:
    """A page visit sets the cookie that the forms' hidden field must match."""
    client.get("/")
    return client.get_cookie("atelier_csrf").value


def make_job(
    settings: Settings,
    *,
    kind: str = "style_transfer",
    status: str = "succeeded",
    files: dict[str, tuple[str, bytes]] | None = None,
    params: dict[str, Any] | None = None,
    **values: Any,
) -> str:
    """A job row with ``files`` ({name: (role, bytes)}) written to storage."""
    job_id = new_job_id()
    storage = open_storage(settings.storage_url)
    stored = []
    for name, (role, data) in (files or {}).items():
        storage.put_bytes(job_key(job_id, name), data)
        kind_type = "application/json" if name.endswith(".json") else "image/png"
        if name.endswith(".jpg"):
            kind_type = "image/jpeg"
        stored.append(StoredFile(role, name, kind_type, len(data)))
    with session_scope(settings.database_url) as session:
        add_job(session, job_id=job_id, kind=kind, owner="local", params=params or {}, files=stored)
        session.flush()
        finished = utcnow() if status in {"succeeded", "failed", "canceled"} else None
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=status, finished_at=finished, **values)
        )
    return job_id


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()
