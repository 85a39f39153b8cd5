"""A job read on the driver's own cursor (shared.jobs.read_job_pooled) fails as a read
through SQLAlchemy does: 503 ``unavailable`` while the database cannot be reached, and a
connection the database dropped leaves the pool, so the next poll is answered."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

import shared.db
from shared.jobs import new_job_id
from tests.conftest import style_form
from web import create_app


def _unavailable(answer) -> bool:
    return answer.status_code == 503 and answer.get_json()["error"]["code"] == "unavailable"


@pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)
def test_no_database_server_answers_503(settings):
    gone = dataclasses.replace(settings, database_url="postgresql+psycopg://atelier@127.0.0.1:1/x")
    client = create_app({"ATELIER_SETTINGS": gone, "TESTING": True}).test_client()
    assert _unavailable(client.get(f"/api/v1/jobs/{new_job_id()}"))


@pytest.mark.parametrize(
    "fresh_db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_connection_the_database_dropped_fails_one_read_and_leaves_the_pool(
    client, settings, monkeypatch
):
    # no liveness ping before reuse, however slow this machine: the read meets the drop
    monkeypatch.setattr(shared.db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    submitted = client.post("/api/v1/jobs", data=style_form(), content_type="multipart/form-data")
    path = submitted.headers["Location"]
    assert client.get(path).status_code == 200  # a read connection is now in the pool
    admin_url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        dropped = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert dropped >= 1
    assert _unavailable(client.get(path))
    answer = client.get(path)
    assert answer.status_code == 200 and answer.get_json()["status"] == "queued"
