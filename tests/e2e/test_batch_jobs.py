"""Batched optimisation fed by the queue (worker/batching.py): jobs submitted through the
real app, run by the real runner in process (and once by a real worker process).

The queue's state is made explicit: every job is queued before the runner (or worker)
looks, so which jobs join a batch never depends on timing. Results are compared with
lone runs of the same jobs within tests/engines/test_batch_style.py's tolerance, with
PyTorch's native CPU convolution as there. A cancel "while the batch runs" is a
database trigger that flags the cancel when that job's progress write reaches step 3,
the write that then stops it: a person pressing cancel at exactly that step.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, text

from shared.db import session_scope
from shared.models import Job
from shared.settings import BATCH_SIZE_MAX, BATCH_WAIT_MS_MAX, load_settings
from tests.conftest import WorkerProcess, style_form, tiny_png, wait_for
from tests.native_conv import native_conv
from tests.web.helpers import make_job
from worker import batching
from worker.batching import run_job

SIZE, STEPS = 48, 8
WAITED = "waiting"  # worker/batching.py's log line when it waits for a partner
MAIN_THREAD = threading.main_thread()


def _submit(client, content: bytes, seed: int, **fields) -> str:
    form = style_form(content, **{"size": SIZE, "iterations": STEPS, "seed": seed, **fields})
    response = client.post("/api/v1/jobs", data=form, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _three(client) -> list[str]:
    """Three different jobs of one shape (same size and aspect, different images and seeds)."""
    return [
        _submit(client, tiny_png(48, 32), 1),
        _submit(client, tiny_png(48, 32, color=(30, 160, 90)), 2, strength="0.7"),
        _submit(client, tiny_png(96, 64, color=(90, 90, 200)), 3, tv_weight="0.01"),
    ]


def _rows(settings, ids: list[str]) -> list[Job]:
    with session_scope(settings.database_url) as session:
        rows = {row.id: row for row in session.scalars(select(Job).where(Job.id.in_(ids)))}
        session.expunge_all()
    return [rows[job_id] for job_id in ids]


def _image(client, job_id: str) -> np.ndarray:
    with client.get(f"/api/v1/jobs/{job_id}/files/result.png") as response:
        assert response.status_code == 200
        return np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB"), dtype=np.int16)


def _batched(settings, **overrides):
    return dataclasses.replace(settings, **{"batch_size": 3, "batch_wait_ms": 1, **overrides})


def test_three_queued_jobs_of_one_shape_run_as_one_batch_like_lone_runs(client, settings):
    with native_conv():
        alone = _three(client)
        for job_id in alone:
            assert run_job(job_id, worker="alone", settings=settings) == "succeeded"
        batch = _three(client)
        assert run_job(batch[0], worker="batch", settings=_batched(settings)) == "succeeded"
    lone_rows, rows = _rows(settings, alone), _rows(settings, batch)
    for row, lone in zip(rows, lone_rows, strict=True):
        assert row.status == "succeeded" and row.worker == "batch" and row.attempts == 1
        assert row.metrics["batch_size"] == 3 and "batch_size" not in lone.metrics
        assert row.metrics["seed"] == lone.metrics["seed"]
        for term, value in lone.metrics["losses"].items():
            assert row.metrics["losses"][term] == pytest.approx(value, rel=0.03), term
        diff = np.abs(_image(client, row.id) - _image(client, lone.id))
        assert float(diff.mean()) <= 1.0 and int(diff.max()) <= 8
        assert row.progress_current == row.progress_total == STEPS  # its own progress
        assert row.preview_step == STEPS


def _cancel_when(settings, name: str, column: str, condition: str) -> None:
    """A trigger ``name`` that flags a job's cancel in the very write that updates
    ``column`` to rows matching ``condition`` (SQL on ``NEW``): a person pressing cancel
    at exactly that moment, every run."""
    with session_scope(settings.database_url) as session:
        if settings.database_url.startswith("sqlite"):
            session.execute(
                text(
                    f"CREATE TRIGGER {name} AFTER UPDATE OF {column} ON jobs "
                    f"WHEN {condition} AND NEW.cancel_requested_at IS NULL BEGIN UPDATE jobs "
                    "SET cancel_requested_at = CURRENT_TIMESTAMP WHERE id = NEW.id; END"
                )
            )
            return
        session.execute(
            text(
                f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
                f"IF {condition} AND NEW.cancel_requested_at IS NULL THEN "
                "NEW.cancel_requested_at := now(); END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        session.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE UPDATE OF {column} ON jobs "
                f"FOR EACH ROW EXECUTE FUNCTION {name}()"
            )
        )


def _cancel_at_step(settings, job_id: str, step: int) -> None:
    """Flag ``job_id``'s cancel in the same write that records its progress at ``step``."""
    condition = f"NEW.id = '{job_id}' AND NEW.progress_current >= {step}"
    _cancel_when(settings, "cancel_at_step", "progress_current", condition)


def test_a_member_canceled_while_the_batch_runs_leaves_the_others_succeeded(client, settings):
    batch = _three(client)
    _cancel_at_step(settings, batch[1], 3)
    every_step = _batched(settings, progress_interval=0.0)  # each step writes, and checks
    assert run_job(batch[0], worker="batch", settings=every_step) == "succeeded"
    first, canceled, third = _rows(settings, batch)
    assert canceled.status == "canceled" and canceled.progress_current == 3
    assert canceled.finished_at is not None and canceled.metrics is None
    for row in (first, third):
        assert row.status == "succeeded" and row.metrics["batch_size"] == 3
        assert row.progress_current == STEPS


def _cancel_at_claim(settings, job_id: str) -> None:
    """Flag ``job_id``'s cancel in the write that claims it: a person pressing cancel
    after the batch took the job, before its first step."""
    condition = f"NEW.id = '{job_id}' AND NEW.status = 'starting'"
    _cancel_when(settings, "cancel_at_claim", "status", condition)


def test_a_member_canceled_before_the_batch_starts_ends_at_its_first_step(client, settings):
    batch = _three(client)
    _cancel_at_claim(settings, batch[2])
    assert run_job(batch[0], worker="batch", settings=_batched(settings)) == "succeeded"
    first, second, canceled = _rows(settings, batch)
    assert (canceled.status, canceled.worker, canceled.attempts) == ("canceled", "batch", 1)
    assert canceled.progress_current == 1 and canceled.metrics is None
    for row in (first, second):
        assert row.status == "succeeded" and row.metrics["batch_size"] == 3


def test_a_lone_job_with_an_empty_queue_runs_alone_without_waiting(client, settings, caplog):
    caplog.set_level(logging.INFO, logger=batching.__name__)
    job_id = _submit(client, tiny_png(48, 32), 1)
    waiting = _batched(settings, batch_wait_ms=BATCH_WAIT_MS_MAX)
    assert run_job(job_id, worker="batch", settings=waiting) == "succeeded"
    [row] = _rows(settings, [job_id])
    assert "batch_size" not in row.metrics
    assert not [r for r in caplog.records if WAITED in r.getMessage()]


def test_jobs_of_other_shapes_are_not_batched(client, settings, caplog):
    caplog.set_level(logging.INFO, logger=batching.__name__)
    lead = _submit(client, tiny_png(48, 32), 1)
    portrait = _submit(client, tiny_png(32, 48), 2)  # another aspect: another pyramid
    smaller = _submit(client, tiny_png(48, 32), 3, size=32)  # another size
    adam = _submit(client, tiny_png(48, 32), 4, optimizer="adam")  # always alone
    assert run_job(lead, worker="batch", settings=_batched(settings)) == "succeeded"
    rows = _rows(settings, [lead, portrait, smaller, adam])
    assert "batch_size" not in rows[0].metrics
    assert [row.status for row in rows[1:]] == ["queued"] * 3  # not claimed
    waits = [r for r in caplog.records if WAITED in r.getMessage()]
    assert len(waits) == 1  # the queue was not empty: one bounded wait, then alone


def test_candidates_come_in_fair_order(settings):
    """Owners take turns (neither has started a job yet: the older first job first),
    each owner's oldest first; a higher priority goes before both."""
    from datetime import timedelta

    from shared.timeutil import utcnow

    now = utcnow()

    def queued(owner: str, minutes: int, priority: int = 5) -> str:
        created = now - timedelta(minutes=60 - minutes)
        return make_job(
            settings,
            status="queued",
            queue="gpu",
            owner=owner,
            created_at=created,
            priority=priority,
        )

    ann = [queued("ann", m) for m in (1, 2, 3)]
    bob = [queued("bob", m) for m in (4, 5)]
    urgent = queued("cy", 9, priority=7)
    with session_scope(settings.database_url) as session:
        order = batching.queued_in_fair_order(session, "gpu", 10)
        assert order == [urgent, ann[0], bob[0], ann[1], bob[1], ann[2]]
        assert batching.queued_in_fair_order(session, "gpu", 2) == [urgent, ann[0]]


def test_candidates_keep_the_queues_own_fair_order_among_other_jobs(settings):
    """Jobs that cannot join (another kind, a retried job) still take their owner's turn,
    and an owner who started a job on the queue lately waits: the candidates come in the
    order the queue itself serves them (what ``pick_next`` takes, job after job)."""
    from datetime import timedelta

    from shared import fairness
    from shared.timeutil import utcnow

    now = utcnow()

    def queued(owner: str, minutes: int, **values) -> str:
        created = now - timedelta(minutes=60 - minutes)
        values = {"status": "queued", "queue": "gpu", "owner": owner, **values}
        return make_job(settings, created_at=created, priority=5, **values)

    make_job(settings, queue="gpu", owner="dan", started_at=now)  # dan was served lately
    dan = [queued("dan", m) for m in (1, 2)]
    ann_retried = queued("ann", 3, attempts=1)
    ann = [queued("ann", m) for m in (4, 5)]
    eve_other = queued("eve", 6, kind="finetune")
    eve = queued("eve", 7)
    with session_scope(settings.database_url) as session:
        served = []  # each pick started in turn, then the whole run undone
        while (job_id := fairness.pick_next(session, "gpu")) is not None:
            started = now + timedelta(seconds=len(served) + 1)
            session.execute(
                Job.__table__.update()
                .where(Job.id == job_id)
                .values(status="starting", started_at=started)
            )
            served.append(job_id)
        session.rollback()
        expected = [j for j in served if j not in (ann_retried, eve_other)]
        assert expected == [dan[0], ann[0], eve, dan[1], ann[1]]
        assert batching.queued_in_fair_order(session, "gpu", 10) == expected
        assert batching.queued_in_fair_order(session, "gpu", 3) == expected[:3]


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        ("ATELIER_BATCH_SIZE", "1", True),
        ("ATELIER_BATCH_SIZE", str(BATCH_SIZE_MAX), True),
        ("ATELIER_BATCH_SIZE", "0", False),
        ("ATELIER_BATCH_SIZE", str(BATCH_SIZE_MAX + 1), False),
        ("ATELIER_BATCH_SIZE", "four", False),
        ("ATELIER_BATCH_WAIT_MS", "0", True),
        ("ATELIER_BATCH_WAIT_MS", str(BATCH_WAIT_MS_MAX), True),
        ("ATELIER_BATCH_WAIT_MS", str(BATCH_WAIT_MS_MAX + 1), False),
    ],
)
def test_batch_settings_are_bounded_and_a_bad_one_names_its_variable(monkeypatch, name, value, ok):
    monkeypatch.setenv(name, value)
    if ok:
        assert getattr(load_settings(), name.removeprefix("ATELIER_").lower()) == int(value)
    else:
        with pytest.raises(ValueError, match=name):
            load_settings()


def test_a_worker_with_a_bad_batch_size_refuses_to_start(settings, tmp_path):
    bad = dataclasses.replace(settings, batch_size=BATCH_SIZE_MAX + 1)
    worker = WorkerProcess(bad, "bad-batch", tmp_path / "bad-batch.log")
    try:
        with pytest.raises(RuntimeError, match="ATELIER_BATCH_SIZE must be from 1 to"):
            worker.wait_ready(bad)
    finally:
        worker.stop()


@pytest.mark.slow
def test_a_real_worker_started_on_a_queue_of_three_runs_them_as_one_batch(
    client, settings, tmp_path
):
    batch = _three(client)  # queued before any worker runs
    name = f"batch-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(_batched(settings), name, tmp_path / f"{name}.log")
    try:
        worker.wait_ready(settings)
        done = ("succeeded", "failed", "canceled")
        wait_for(lambda: all(row.status in done for row in _rows(settings, batch)), 240)
    finally:
        worker.stop()
    for row in _rows(settings, batch):
        assert row.status == "succeeded", (row.error_code, row.error_message)
        assert row.metrics["batch_size"] == 3 and row.worker == worker.hostname


@contextmanager
def _soft_time_limit_at_step(job_id: str, step: int) -> Iterator[None]:
    """Celery's soft time limit landing in ``job_id``'s progress write of ``step`` (its
    ``step``-th: every step writes), in the main thread, as the signal would raise it."""
    from celery.exceptions import SoftTimeLimitExceeded
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    writes = 0

    def before(_conn, _cursor, statement, parameters, _context, _many) -> None:
        nonlocal writes
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        progress = statement.startswith("UPDATE jobs") and "progress_current" in statement
        if progress and job_id in values and threading.current_thread() is MAIN_THREAD:
            writes += 1
            if writes == step:
                raise SoftTimeLimitExceeded()

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", before)


def test_the_soft_time_limit_in_one_members_step_ends_every_job_of_the_batch(client, settings):
    """The limit is the task's, raised once: the batch stops, every job ends ``timeout``
    at its next step instead of running on until the hard limit kills the worker."""
    batch = _three(client)
    every_step = _batched(settings, progress_interval=0.0)
    with _soft_time_limit_at_step(batch[1], 3):
        assert run_job(batch[0], worker="batch", settings=every_step) == "failed"
    for row in _rows(settings, batch):
        assert (row.status, row.error_code) == ("failed", "timeout"), row.id
        assert row.progress_current <= 3 and row.finished_at is not None
