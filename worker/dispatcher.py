"""The housekeeping loop (``atelier dispatcher``; ``atelier up`` runs it in a thread).

Each pass: requeue (or fail, past the attempts cap) running jobs whose worker stopped
heartbeating; publish queued jobs the web could not hand to Redis; and, every minute,
delete finished jobs past the retention time. So neither a broker outage nor a killed
worker loses a job, and storage does not grow without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import Celery

from shared.db import session_scope
from shared.housekeeping import expired_jobs, pending_dispatch, reap_stale
from shared.jobs import mark_enqueued
from shared.models import Job
from shared.queue import CPU_QUEUE, NOTIFY_TASK, QUEUE_FOR_KIND, RUN_JOB_TASK, celery_config
from shared.settings import Settings
from shared.states import FAILED
from shared.storage import open_storage

log = logging.getLogger(__name__)
Send = Callable[[str, list, str], None]  # (task name, args, queue)
RETENTION_EVERY = 60.0


def make_sender(settings: Settings) -> Send:
    """Publish by task name with a client of our own (no worker app import needed)."""
    client = Celery("atelier-dispatcher")
    client.conf.update(
        celery_config(
            settings.broker_url,
            soft_time_limit=settings.soft_time_limit,
            time_limit=settings.time_limit,
            visibility_timeout=settings.visibility_timeout,
        )
    )

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
        if status == FAILED:
            try:
                send(NOTIFY_TASK, [job_id, "completed"], CPU_QUEUE)
            except Exception:
                log.warning("could not queue the completed webhook of %s", job_id)


def dispatch(settings: Settings, send: Send) -> int:
    """Publish queued rows the broker never took; returns how many were published."""
    with session_scope(settings.database_url) as session:
        pending = pending_dispatch(session)
    published = 0
    for job_id, kind in pending:
        try:
            send(RUN_JOB_TASK, [job_id], QUEUE_FOR_KIND.get(kind, "gpu"))
        except Exception:
            log.warning("broker still unreachable; %d jobs wait", len(pending) - published)
            break
        with session_scope(settings.database_url) as session:
            mark_enqueued(session, job_id)
        published += 1
    return published


def delete_expired(settings: Settings) -> int:
    """Remove finished jobs past ATELIER_RESULT_TTL: files first, then rows."""
    storage = open_storage(settings.storage_url)
    with session_scope(settings.database_url) as session:
        expired = expired_jobs(session, ttl_seconds=settings.result_ttl)
    for job_id in expired:
        storage.delete_prefix(f"jobs/{job_id}")
        with session_scope(settings.database_url) as session:
            job = session.get(Job, job_id)
            if job is not None:
                session.delete(job)
    return len(expired)


def sweep_once(settings: Settings, send: Send, *, retention: bool = True) -> int:
    """One pass of everything; returns how many jobs were published."""
    reap(settings, send)
    published = dispatch(settings, send)
    if retention:
        delete_expired(settings)
    return published


def run_forever(settings: Settings, stop: threading.Event, interval: float = 2.0) -> None:
    send = make_sender(settings)
    last_retention = 0.0
    while not stop.wait(interval):
        try:
            now = time.monotonic()
            due = now - last_retention >= RETENTION_EVERY
            sweep_once(settings, send, retention=due)
            if due:
                last_retention = now
        except Exception:
            log.exception("dispatcher pass failed; retrying")
