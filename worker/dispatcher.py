"""The housekeeping loop (``atelier dispatcher``; ``atelier up`` runs it in a thread).

Each pass: requeue (or fail, past the attempts cap) running jobs whose worker stopped
heartbeating; hand over sweeps whose children have all ended; publish queued jobs the
web could not hand to Redis; and, every minute,
publish again queued jobs whose message Redis lost, and delete finished jobs past the
retention time; every ten minutes, delete storage folders that have no job row (older
than ATELIER_ORPHAN_GRACE_SECONDS). A job this loop ends (attempts exhausted) loses
its resume checkpoints at once (:func:`delete_job_checkpoints`); an expired one loses
them with its whole folder. So neither a broker outage nor a killed
worker loses a job, and storage does not grow without bound.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable

import redis
from celery import Celery
from sqlalchemy import select, update

from shared import events
from shared.checkpoints import delete_job_checkpoints
from shared.db import session_scope
from shared.fairness import paused_queues
from shared.housekeeping import (
    active_predicts,
    expired_jobs,
    pending_dispatch,
    published_but_waiting,
    reap_stale,
    sweep_orphan_files,
)
from shared.jobs import mark_enqueued
from shared.kinds import load_modules
from shared.kinds import sweep as sweeps
from shared.models import Job
from shared.queue import (
    CPU_QUEUE,
    GPU_QUEUE,
    NOTIFY_TASK,
    RUN_JOB_TASK,
    celery_config,
    queue_for,
)
from shared.quotas import lock_owner
from shared.settings import Settings
from shared.states import FAILED, WAITING_QUEUE
from shared.storage import open_storage
from shared.timeutil import utcnow

log = logging.getLogger(__name__)
Send = Callable[[str, list, str], None]  # (task name, args, queue)
SLOW_CHECKS_EVERY = 60.0
ORPHAN_SWEEP_EVERY = 600.0  # it lists the whole storage: rarely, the grace is an hour


def make_sender(settings: Settings) -> Send:
    """Publish by task name with a client of our own (no worker app import needed)."""
    client = Celery("atelier-dispatcher")
    client.conf.update(celery_config(settings))

    def send(task: str, args: list, queue: str) -> None:
        task_id = args[0] if task == RUN_JOB_TASK else None
        client.send_task(task, args=args, queue=queue, task_id=task_id, retry=False)

    return send


def reap(settings: Settings, send: Send) -> None:
    with session_scope(settings.database_url) as session:
        moved = reap_stale(
            session, timeout_seconds=settings.heartbeat_timeout, max_attempts=settings.max_attempts
        )
    for job_id, status in moved:
        log.warning(
            "job %s: no heartbeat for %ss, now %s", job_id, settings.heartbeat_timeout, status
        )
        events.notify(settings, job_id, events.STATUS)  # open streams see it now, not at 15 s
        if status == FAILED:
            _forget_checkpoints(settings, job_id)
            try:
                send(NOTIFY_TASK, [job_id, "completed"], CPU_QUEUE)
            except Exception:
                log.warning("could not queue the completed webhook of %s", job_id)


def _forget_checkpoints(settings: Settings, job_id: str) -> None:
    """The checkpoints of a job the reaper failed: no attempt will continue from them."""
    with session_scope(settings.database_url) as session:
        attempts = session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0
    delete_job_checkpoints(open_storage(settings.storage_url, settings), job_id, attempts)


def _queue(job_id: str, kind: str) -> str | None:
    """The kind's queue, or None (logged) for a kind this process has no spec of: its
    jobs wait until a dispatcher that loads the kind (ATELIER_KIND_MODULES) sends them."""
    try:
        return queue_for(kind)
    except LookupError:
        log.error("job %s has kind %r, which no loaded spec defines; it waits", job_id, kind)
        return None


def dispatch(settings: Settings, send: Send) -> int:
    """Publish queued rows the broker never took, but none of a paused queue (their
    messages would only be dropped); returns how many were published."""
    with session_scope(settings.database_url) as session:
        skipped = paused_queues(session) | {WAITING_QUEUE}  # a sweep waits for its children
        pending = pending_dispatch(session, skip_queues=skipped)
    published = 0
    for job_id, kind in pending:
        queue = _queue(job_id, kind)
        if queue is None:
            continue
        try:
            send(RUN_JOB_TASK, [job_id], queue)
        except Exception:
            log.warning("broker still unreachable; %d jobs wait", len(pending) - published)
            break
        with session_scope(settings.database_url) as session:
            mark_enqueued(session, job_id)
        published += 1
    return published


def _message_ids(client: redis.Redis) -> set[str]:
    """Task ids of every run_job message Redis holds: waiting in a queue or unacked."""
    ids: set[str] = set()
    raws: list[bytes] = []
    for queue in (GPU_QUEUE, CPU_QUEUE):
        for key in client.scan_iter(match=f"{queue}*"):
            if client.type(key) == b"list":
                raws.extend(client.lrange(key, 0, -1))
    for raw in client.hvals("unacked"):
        try:
            raws.append(json.dumps(json.loads(raw)[0]).encode())
        except (ValueError, IndexError, TypeError):
            continue
    for raw in raws:
        try:
            ids.add(json.loads(raw)["headers"]["id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def republish_lost(settings: Settings, send: Send, *, older_than: float = 30.0) -> int:
    """Publish again queued jobs whose message Redis no longer has (a restart without
    persistence, a flushed database). A duplicate is harmless: the claim is a CAS.

    A worker runs the best job of a queue on any of its messages (shared/fairness.py),
    so a job can wait while the message labelled with its id is gone and another one
    stands for it; such a job is published again too, and the spare message later runs
    the next job or nothing. That costs a message now and then, never a job."""
    with session_scope(settings.database_url) as session:
        waiting = published_but_waiting(
            session,
            older_than_seconds=older_than,
            skip_queues=paused_queues(session) | {WAITING_QUEUE},
        )
    if not waiting:
        return 0
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=2)
    present = _message_ids(client)
    lost = [(job_id, kind) for job_id, kind in waiting if job_id not in present]
    for job_id, kind in lost:
        queue = _queue(job_id, kind)
        if queue is None:
            continue
        log.warning("job %s was queued but its message is gone; publishing it again", job_id)
        send(RUN_JOB_TASK, [job_id], queue)
        with session_scope(settings.database_url) as session:
            session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    return len(lost)


def hand_over_sweeps(settings: Settings) -> list[str]:
    """Hand over each sweep whose children have all ended but that is still waiting:
    the process that ended the last child died before it could (shared/kinds/sweep.py).
    The hand-over is a compare-and-set, so a sweep moves once however many try; the
    ``dispatch`` that follows in the same pass publishes it."""
    with session_scope(settings.database_url) as session:
        ready = sweeps.ready_parents(session)
    moved = []
    for parent_id in ready:
        with session_scope(settings.database_url) as session:
            if sweeps.child_ended(session, parent_id):
                moved.append(parent_id)
    for parent_id in moved:
        log.warning("sweep %s: its children have ended; handed over by the dispatcher", parent_id)
    return moved


def delete_expired(settings: Settings) -> int:
    """Remove finished jobs past ATELIER_RESULT_TTL: the row, then its files.

    Each row is deleted under its owner's lock, after checking again that no predict job
    submitted since the listing uses it as its model (the submit takes the same lock).
    Files left by a crash between the two steps are removed by the orphan sweep.
    """
    storage = open_storage(settings.storage_url, settings)
    with session_scope(settings.database_url) as session:
        expired = expired_jobs(session, ttl_seconds=settings.result_ttl)
        owners = {job_id: session.get(Job, job_id).owner for job_id in expired}
    removed = 0
    for job_id in expired:
        with session_scope(settings.database_url) as session:
            lock_owner(session, owners[job_id])
            job = session.get(Job, job_id)
            if job is None or active_predicts(session, job_id):
                continue
            session.delete(job)
        storage.delete_prefix(f"jobs/{job_id}")
        removed += 1
    return removed


def sweep_orphans(settings: Settings) -> int:
    """Delete storage folders with no job row, older than ATELIER_ORPHAN_GRACE_SECONDS."""
    removed = sweep_orphan_files(
        settings.database_url,
        open_storage(settings.storage_url, settings),
        grace_seconds=settings.orphan_grace_seconds,
    )
    if removed:
        log.warning("removed the files of %d jobs with no row, e.g. %s", len(removed), removed[:5])
    return len(removed)


def sweep_once(
    settings: Settings, send: Send, *, slow_checks: bool = True, orphans: bool = False
) -> int:
    """One pass; ``slow_checks`` adds lost-message recovery and retention (once a minute),
    ``orphans`` the orphan-file sweep (every ten minutes).

    Returns how many jobs were published.
    """
    reap(settings, send)
    hand_over_sweeps(settings)
    published = dispatch(settings, send)
    if slow_checks:
        published += republish_lost(settings, send)
        delete_expired(settings)
    if orphans:
        sweep_orphans(settings)
    return published


def run_forever(settings: Settings, stop: threading.Event, interval: float = 2.0) -> None:
    """Pass after pass until ``stop``. The deployment's own kinds (ATELIER_KIND_MODULES)
    load first: publishing a job needs its kind's queue."""
    load_modules(settings.kind_modules)
    send = make_sender(settings)
    last_slow = last_orphans = -math.inf  # both due on the first pass
    while not stop.wait(interval):
        try:
            now = time.monotonic()
            due = now - last_slow >= SLOW_CHECKS_EVERY
            orphans_due = now - last_orphans >= ORPHAN_SWEEP_EVERY
            sweep_once(settings, send, slow_checks=due, orphans=orphans_due)
            if due:
                last_slow = now
            if orphans_due:
                last_orphans = now
        except Exception:
            log.exception("dispatcher pass failed; retrying")
