"""The fair order on both databases: priority, then owners in turns, then age; the queue
position is the place in that order; pausing marks jobs unpublished; priority's bounds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared import fairness, states
from shared.db import session_scope
from shared.errors import InputError
from shared.housekeeping import pending_dispatch
from shared.jobs import add_job, mark_enqueued, new_job_id, queue_position
from shared.models import Job
from shared.timeutil import utcnow

T0 = utcnow() - timedelta(hours=1)


def _queued(url: str, owner: str, second: int, priority: int = 5, kind="style_transfer") -> str:
    """A queued job of ``owner`` created ``second`` s after T0 (so the order is exact)."""
    job_id = new_job_id()
    with session_scope(url) as session:
        add_job(
            session,
            job_id=job_id,
            kind=kind,
            owner=owner,
            params={},
            files=[],
            priority=priority,
        )
    with session_scope(url) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(created_at=T0 + timedelta(seconds=second))
        )
    return job_id


def _positions(url: str, ids: list[str]) -> dict[str, int | None]:
    with session_scope(url) as session:
        return {job_id: queue_position(session, session.get(Job, job_id)) for job_id in ids}


def _serve_all(url: str) -> list[str]:
    """Claim jobs one at a time in the order pick_next gives, as one worker would."""
    served = []
    while True:
        with session_scope(url) as session:
            chosen = fairness.pick_next(session, "gpu")
            if chosen is None:
                return served
            assert states.claim(session, chosen, "w1") is not None
        served.append(chosen)


def test_one_owners_backlog_delays_another_owner_by_one_turn(settings):
    url = settings.database_url
    backlog = [_queued(url, "ann", second) for second in range(8)]
    with session_scope(url) as session:
        states.claim(session, fairness.pick_next(session, "gpu"), "w1")  # ann runs one
    single = _queued(url, "bob", 100)  # bob's one job comes last
    assert _positions(url, [single]) == {single: 1}
    order = _serve_all(url)
    assert order[0] == single  # bob never had a turn, ann just had one
    assert order[1:] == backlog[1:]


def test_owners_take_turns_within_a_priority_and_priority_comes_first(settings):
    url = settings.database_url
    ann = [_queued(url, "ann", s) for s in (0, 1, 2, 3)]
    bob = [_queued(url, "bob", s) for s in (10, 11)]
    cat = [_queued(url, "cat", 20)]
    urgent = _queued(url, "dan", 30, priority=8)
    low = _queued(url, "cat", 5, priority=0)
    everyone = [*ann, *bob, *cat, urgent, low]
    positions = _positions(url, everyone)
    order = _serve_all(url)
    # priority first; then owners in turns, one job each per round (none was served yet,
    # so the owner of the older first job goes first); priority 0 last
    assert order == [urgent, ann[0], bob[0], cat[0], ann[1], bob[1], ann[2], ann[3], low]
    # the position of each job was its place in the order that was then served
    assert sorted(everyone, key=positions.get) == order
    assert sorted(positions.values()) == list(range(1, len(everyone) + 1))


def test_position_follows_whose_turn_it_is(settings):
    url = settings.database_url
    ann = [_queued(url, "ann", s) for s in (0, 1, 2)]
    bob = [_queued(url, "bob", s) for s in (5, 6)]
    first = _serve_all_one(url)
    assert first == ann[0]
    positions = _positions(url, [*ann, *bob])
    # ann was served last, so bob goes next; then they alternate
    assert positions == {ann[0]: None, bob[0]: 1, ann[1]: 2, bob[1]: 3, ann[2]: 4}
    assert _serve_all(url) == [bob[0], ann[1], bob[1], ann[2]]


def test_a_higher_priority_start_counts_as_the_owners_turn(settings):
    url = settings.database_url
    ann, bob = _queued(url, "ann", 0), _queued(url, "bob", 1)
    urgent = _queued(url, "bob", 2, priority=9)
    assert _serve_all(url) == [urgent, ann, bob]


def _serve_all_one(url: str) -> str:
    with session_scope(url) as session:
        chosen = fairness.pick_next(session, "gpu")
        assert states.claim(session, chosen, "w1") is not None
    return chosen


def test_a_canceled_job_is_never_picked_and_queues_are_separate(settings):
    url = settings.database_url
    gone, kept = _queued(url, "ann", 0), _queued(url, "ann", 1)
    with session_scope(url) as session:
        assert states.cancel_queued(session, gone)
    with session_scope(url) as session:
        assert fairness.pick_next(session, "gpu") == kept
        assert fairness.pick_next(session, "cpu") is None
        assert session.get(Job, kept).queue == "gpu" and session.get(Job, kept).priority == 5
    assert _positions(url, [gone, kept]) == {gone: None, kept: 1}


def test_pausing_unpublishes_the_queue_and_the_dispatcher_skips_it(settings):
    url = settings.database_url
    job_id = _queued(url, "ann", 0)
    with session_scope(url) as session:
        mark_enqueued(session, job_id)
    with session_scope(url) as session:
        assert fairness.pause(session, "gpu", "root")
        assert not fairness.pause(session, "gpu", "root")  # already paused
    with session_scope(url) as session:
        assert session.get(Job, job_id).enqueued_at is None
        assert fairness.paused_queues(session) == {"gpu"}
        assert pending_dispatch(session, grace_seconds=0, skip_queues={"gpu"}) == []
        state = fairness.queue_states(session, ["cpu", "gpu"])
        assert [(s.name, s.paused, s.paused_by, s.queued) for s in state] == [
            ("cpu", False, None, 0),
            ("gpu", True, "root", 1),
        ]
        assert fairness.resume(session, "gpu")
        assert not fairness.resume(session, "gpu")
    with session_scope(url) as session:
        assert pending_dispatch(session, grace_seconds=0) == [(job_id, "style_transfer")]
        assert session.scalar(select(Job.status).where(Job.id == job_id)) == "queued"


@pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)
def test_priority_bounds_are_checked_once_at_the_edge(fresh_db_url):
    assert fairness.parse_priority(None, is_admin=False) == 5
    assert fairness.parse_priority(" ", is_admin=False) == 5
    assert fairness.parse_priority("0", is_admin=False) == 0
    assert fairness.parse_priority("9", is_admin=True) == 9
    for bad in ("10", "-1", "x", "5.0", "٣"):
        with pytest.raises(InputError) as refused:
            fairness.parse_priority(bad, is_admin=True)
        assert refused.value.field == "priority" and refused.value.status == 400
    with pytest.raises(InputError) as refused:
        fairness.parse_priority("6", is_admin=False)
    assert refused.value.field == "priority" and refused.value.status == 403
