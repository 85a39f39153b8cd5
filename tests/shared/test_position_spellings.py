"""The queue position has one formula and two spellings (shared/fairness.py): the one
every ``position_of`` runs, and the one the job read runs on SQLite, written so SQLite
reads index ranges. Both must give every job the same number, ties and turns included
(tests/shared/test_fairness.py checks that number against the order served)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from shared import fairness, states
from shared.db import session_scope
from shared.jobs import add_job, new_job_id, read_job_pooled
from shared.models import Job
from shared.timeutil import utcnow

T0 = utcnow() - timedelta(hours=1)


def _job(url: str, owner: str, second: int, priority: int = 5) -> str:
    job_id = new_job_id()
    with session_scope(url) as session:
        add_job(
            session,
            job_id=job_id,
            kind="style_transfer",
            owner=owner,
            params={},
            files=[],
            priority=priority,
        )
    with session_scope(url) as session:
        at = T0 + timedelta(seconds=second)
        session.execute(update(Job).where(Job.id == job_id).values(created_at=at))
    return job_id


def _queue(url: str) -> list[str]:
    """Three owners at two priorities, equal times (ties broken by id), and one owner who
    has been served already (it waits its turn behind those who have not)."""
    ids = [_job(url, owner, second) for owner, second in [("bob", 1), ("bob", 2), ("bob", 3)]]
    ids += [_job(url, "ann", 2), _job(url, "ann", 2), _job(url, "ann", 5)]
    ids += [_job(url, "cy", 4), _job(url, "cy", 9, priority=7), _job(url, "ann", 8, priority=7)]
    served = _job(url, "bob", 0)
    with session_scope(url) as session:
        assert states.claim(session, served, "w1") is not None  # bob was served once
    return ids


def _each_spelling(url: str, ids: list[str]) -> dict[str, list[int | None]]:
    with session_scope(url) as session:
        dialect = session.get_bind().dialect.name
        spellings = {"generic": fairness.POSITION, dialect: fairness.position_column(dialect)}
        found = {
            name: [
                session.scalar(select(column).select_from(Job).where(Job.id == job_id))
                for job_id in ids
            ]
            for name, column in spellings.items()
        }
    found["read"] = [read_job_pooled(url, job_id, None).queue_position for job_id in ids]
    return found


def test_both_spellings_give_every_job_the_same_place(settings):
    url = settings.database_url
    ids = _queue(url)
    found = _each_spelling(url, ids)
    positions = found["generic"]
    assert all(answer == positions for answer in found.values()), found
    assert sorted(positions) == list(range(1, len(ids) + 1))
    # priority 7 first (neither owner served yet: the older queue first), then priority
    # 5 in rounds: ann and cy (never served) before bob, ann's equal times by id
    tie = sorted(ids[3:5])
    expected = [ids[8], ids[7], tie[0], ids[6], ids[0], tie[1], ids[1], ids[5], ids[2]]
    assert sorted(ids, key=lambda job_id: positions[ids.index(job_id)]) == expected
