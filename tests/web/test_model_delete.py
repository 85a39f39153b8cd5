"""A fine-tune job whose model queued or running predict jobs use is neither deleted by
DELETE (409 naming them) nor by retention, until they end; on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.models import Job
from shared.storage import job_key, open_storage
from shared.timeutil import utcnow
from tests.conftest import tiny_png, wait_for, writes_blocked
from tests.web.helpers import make_job
from worker.dispatcher import delete_expired


def _model(settings) -> str:
    """A succeeded fine_tune job with its model.pt, as a worker leaves it."""
    return make_job(settings, kind="fine_tune", files={"model.pt": ("result", b"weights")})


def active_predicts(session: Session, model: str) -> list[str]:
    """Queued or running predict jobs using ``model``, read plainly (not the app's query)."""
    jobs = session.scalars(select(Job).where(Job.kind == "predict").order_by(Job.created_at))
    return [
        j.id
        for j in jobs
        if j.params.get("model") == model and j.status in {"queued", "starting", "processing"}
    ]


def _predict(client, model: str):
    return client.post(
        "/api/v1/jobs",
        data={"kind": "predict", "model": model, "image": (io.BytesIO(tiny_png()), "a.png")},
        content_type="multipart/form-data",
    )


def _set(settings, job_id: str, **values) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_delete_refuses_a_model_that_live_predicts_use(client, settings):
    model, other_model = _model(settings), _model(settings)
    queued = _predict(client, model).get_json()["id"]
    running = make_job(settings, kind="predict", status="processing", params={"model": model})
    make_job(settings, kind="predict", params={"model": model})  # succeeded: no longer needs it
    make_job(settings, kind="predict", status="queued", params={"model": other_model})

    refused = client.delete(f"/api/v1/jobs/{model}")

    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "conflict"
    assert queued in error["message"] and running in error["message"]
    assert client.get(f"/api/v1/jobs/{model}").status_code == 200
    assert open_storage(settings.storage_url).exists(job_key(model, "model.pt"))

    assert client.post(f"/api/v1/jobs/{queued}/cancel").get_json()["status"] == "canceled"
    still = client.delete(f"/api/v1/jobs/{model}")
    assert still.status_code == 409 and queued not in still.get_json()["error"]["message"]
    _set(settings, running, status="succeeded", finished_at=utcnow())

    assert client.delete(f"/api/v1/jobs/{model}").status_code == 204
    assert client.get(f"/api/v1/jobs/{model}").status_code == 404
    assert not open_storage(settings.storage_url).exists(job_key(model, "model.pt"))


def test_retention_keeps_a_model_until_its_predicts_end(settings):
    long_ago = utcnow() - timedelta(days=30)
    model = _model(settings)
    _set(settings, model, finished_at=long_ago)
    predict = make_job(settings, kind="predict", status="queued", params={"model": model})
    retention = dataclasses.replace(settings, result_ttl=7 * 24 * 3600)

    assert delete_expired(retention) == 0
    with session_scope(settings.database_url) as session:
        assert session.get(Job, model) is not None
        assert active_predicts(session, model) == [predict]

    _set(settings, predict, status="failed", finished_at=utcnow())
    assert delete_expired(retention) == 1
    with session_scope(settings.database_url) as session:
        assert session.get(Job, model) is None
    assert not open_storage(settings.storage_url).exists(job_key(model, "model.pt"))


def _lock_waiters(database_url: str) -> int:
    """PostgreSQL sessions of this database waiting for a lock."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]


def _in_thread(call) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        response = call()
        result["status"], result["body"] = response.status_code, response.get_json()
        response.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _until_blocked(database_url: str, waiters: int) -> None:
    """Wait until ``waiters`` requests wait for the database (seen on PostgreSQL only;
    SQLite's busy wait shows nowhere, and there the order is left to chance)."""
    if database_url.startswith("postgresql"):
        wait_for(lambda: _lock_waiters(database_url) == waiters, timeout=60, interval=0.05)
    else:
        time.sleep(0.5)


@pytest.mark.parametrize("first", ["predict", "delete"])
def test_a_predict_and_the_delete_of_its_model_never_both_succeed(app, settings, first):
    """Both requests pass their own checks while the database holds their writes back,
    then go on together: whichever commits first, the other must see it, so there is
    never a live predict job without its model. On PostgreSQL the one that started first
    wins; the other is refused."""
    model = _model(settings)
    jobs_dir = Path(settings.storage_url.removeprefix("file://")) / "jobs"
    started: dict[str, tuple[threading.Thread, dict]] = {}

    def start_predict() -> None:
        started["predict"] = _in_thread(lambda: _predict(app.test_client(), model))
        # its folder exists once the model check passed and the files are being written
        wait_for(lambda: len(list(jobs_dir.iterdir())) == 2, timeout=60, interval=0.05)

    def start_delete() -> None:
        started["delete"] = _in_thread(lambda: app.test_client().delete(f"/api/v1/jobs/{model}"))

    with writes_blocked(settings.database_url):
        steps = [start_predict, start_delete]
        for waiting, step in enumerate(steps if first == "predict" else steps[::-1], start=1):
            step()
            _until_blocked(settings.database_url, waiting)
    for thread, _ in started.values():
        thread.join(60)
    predict, delete = started["predict"][1], started["delete"][1]

    outcome = (predict["status"], delete["status"])
    assert outcome in {(202, 409), (409, 204)}, (predict, delete)
    if settings.database_url.startswith("postgresql"):
        assert outcome == ((202, 409) if first == "predict" else (409, 204))
    with session_scope(settings.database_url) as session:
        if outcome == (202, 409):
            assert active_predicts(session, model) == [predict["body"]["id"]]
        else:
            assert session.get(Job, model) is None and active_predicts(session, model) == []
            assert predict["body"]["error"]["field"] == "model"
            assert [p.name for p in jobs_dir.iterdir()] == []  # the refused files went too
