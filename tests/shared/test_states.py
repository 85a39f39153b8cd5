"""The state machine refuses illegal transitions and double claims, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from shared import states
from shared.db import session_scope
from shared.jobs import add_job, new_job_id
from shared.models import Job
from tests.conftest import BACKENDS


def _new_job(url: str) -> str:
    job_id = new_job_id()
    with session_scope(url) as session:
        add_job(session, job_id=job_id, kind="style_transfer", owner="local", params={}, files=[])
    return job_id


def _status(url: str, job_id: str) -> Job:
    with session_scope(url) as session:
        return session.get(Job, job_id)


@pytest.mark.parametrize("fresh_db_url", BACKENDS, indirect=True)
def test_lifecycle_and_illegal_transitions(settings):
    url = settings.database_url
    job_id = _new_job(url)
    with session_scope(url) as s:
        assert not states.transition(s, job_id, states.SUCCEEDED)  # queued -> succeeded: no
        assert not states.transition(s, job_id, states.PROCESSING)  # must be claimed first
        assert states.claim(s, job_id, "w1")
        assert states.transition(s, job_id, states.PROCESSING, expect=states.STARTING)
        assert states.transition(s, job_id, states.SUCCEEDED)
    job = _status(url, job_id)
    assert (job.status, job.attempts, job.worker) == ("succeeded", 1, "w1")
    assert job.finished_at is not None and job.finished_at.tzinfo is not None
    with session_scope(url) as s:  # terminal states never change
        for target in (states.FAILED, states.CANCELED, states.QUEUED, states.STARTING):
            assert not states.transition(s, job_id, target)
        assert not states.claim(s, job_id, "w2")
    assert _status(url, job_id).status == "succeeded"


def test_transition_to_unknown_or_impossible_state_is_a_programming_error(settings):
    job_id = _new_job(settings.database_url)
    with session_scope(settings.database_url) as s:
        with pytest.raises(states.IllegalTransition):
            states.transition(s, job_id, "exploded")
        with pytest.raises(states.IllegalTransition):
            states.transition(s, job_id, states.SUCCEEDED, expect=states.QUEUED)
        with pytest.raises(ValueError):
            states.fail(s, job_id, "not_a_code", "x")


@pytest.mark.parametrize("fresh_db_url", BACKENDS, indirect=True)
def test_only_one_of_many_concurrent_claims_wins(settings):
    url = settings.database_url
    job_id = _new_job(url)
    barrier = threading.Barrier(8)
    wins: list[str] = []

    def contender(name: str) -> None:
        barrier.wait()
        with session_scope(url) as s:
            if states.claim(s, job_id, name):
                wins.append(name)

    threads = [threading.Thread(target=contender, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job = _status(url, job_id)
    assert len(wins) == 1 and job.worker == wins[0] and job.attempts == 1


@pytest.mark.parametrize("fresh_db_url", BACKENDS, indirect=True)
def test_cancel_queued_is_immediate_and_running_is_flagged(settings):
    url = settings.database_url
    queued, running = _new_job(url), _new_job(url)
    with session_scope(url) as s:
        assert states.claim(s, running, "w1")
    with session_scope(url) as s:
        assert states.request_cancel(s, queued) == states.CANCELED
        assert states.request_cancel(s, running) == states.STARTING
    assert _status(url, running).cancel_requested_at is not None
    with session_scope(url) as s:  # a canceled job can no longer be claimed
        assert not states.claim(s, queued, "w2")
        assert states.request_cancel(s, queued) == states.CANCELED  # idempotent
