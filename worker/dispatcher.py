"""The outbox sweeper and reaper loop (``atelier dispatcher``; ``atelier up`` runs it in a thread).

Publishes queued jobs the web could not hand to Redis and requeues jobs whose worker
stopped heartbeating, so neither a broker outage nor a killed worker loses a job.
"""

from __future__ import annotations

import logging
import threading

from shared.db import session_scope
from shared.housekeeping import pending_dispatch, reap_stale
from shared.jobs import mark_enqueued
from shared.queue import QUEUE_FOR_KIND, RUN_JOB_TASK
from shared.settings import Settings

log = logging.getLogger(__name__)


def sweep_once(settings: Settings, send) -> int:
    """One pass; ``send(job_id, queue)`` publishes. Returns how many jobs were published."""
    with session_scope(settings.database_url) as session:
        for job_id, status in reap_stale(session, timeout_seconds=settings.heartbeat_timeout):
            log.warning(
                "job %s had no heartbeat for %ss: now %s",
                job_id,
                settings.heartbeat_timeout,
                status,
            )
    with session_scope(settings.database_url) as session:
        pending = pending_dispatch(session)
    published = 0
    for job_id, kind in pending:
        try:
            send(job_id, QUEUE_FOR_KIND.get(kind, "gpu"))
        except Exception:
            log.warning("broker still unreachable; %d jobs wait", len(pending) - published)
            break
        with session_scope(settings.database_url) as session:
            mark_enqueued(session, job_id)
        published += 1
    return published


def run_forever(settings: Settings, stop: threading.Event, interval: float = 2.0) -> None:
    from worker.celery_app import app

    def send(job_id: str, queue: str) -> None:
        app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue, task_id=job_id, retry=False)

    while not stop.wait(interval):
        try:
            sweep_once(settings, send)
        except Exception:
            log.exception("dispatcher pass failed; retrying")
