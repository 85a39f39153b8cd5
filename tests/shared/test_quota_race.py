"""The admission limits hold under concurrency: 30 submits at once, through the real app
into a real database (SQLite and PostgreSQL), admit exactly the limit and no more."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

import pytest
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Job
from shared.storage import open_storage
from tests.conftest import style_form
from web import create_app
from web.ratelimit import check_submit_rate

SUBMITS = 30
LIMIT = 5


def _submit_together(app, count: int) -> list[tuple[int, str | None]]:
    """``count`` threads post a submit each, released at once; (status, error code) each."""
    barrier = threading.Barrier(count)
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def submit() -> None:
        client = app.test_client()
        form = style_form()  # built before the barrier, so the posts start together
        barrier.wait()
        response = client.post("/api/v1/jobs", data=form, content_type="multipart/form-data")
        body = response.get_json()
        response.close()
        with lock:
            results.append((response.status_code, (body.get("error") or {}).get("code")))

    threads = [threading.Thread(target=submit) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a submit hung"
    return results


@pytest.mark.parametrize(
    ("limits", "status", "code"),
    [
        ({"max_active_per_owner": LIMIT}, 429, "quota_exceeded"),
        ({"max_queued_total": LIMIT}, 503, "queue_full"),
    ],
    ids=["per-owner-quota", "queue-cap"],
)
def test_parallel_submits_admit_exactly_the_limit(settings, limits, status, code):
    limited = dataclasses.replace(settings, **limits)
    app = create_app({"ATELIER_SETTINGS": limited, "TESTING": True})
    # web.ratelimit makes its Redis client on first use, without a lock: two threads making
    # it at once can close each other's connection, so it is made here, before the race
    check_submit_rate("warm-up", limited)

    results = Counter(_submit_together(app, SUBMITS))

    assert results == {(202, None): LIMIT, (status, code): SUBMITS - LIMIT}
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == LIMIT
    # the refused submits removed the files they had written before the binding check
    storage = open_storage(settings.storage_url)
    assert sum(len(page) for page in storage.job_prefixes()) == LIMIT
