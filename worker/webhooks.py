"""Delivering webhooks: the first try inline (no queueing delay), retries as Celery tasks.

Only ``completed`` is retried (with exponential backoff): it is the event clients must
not miss; ``start`` is best effort. Redirects are not followed, so a public target can't
bounce a delivery to a private address.
"""

from __future__ import annotations

import logging

from shared.queue import CPU_QUEUE, DELIVER_WEBHOOK_TASK
from shared.settings import Settings
from shared.webhooks import FAILED, notify_once

log = logging.getLogger(__name__)
MAX_RETRIES = 6
BACKOFF_BASE = 2.0


def notify(settings: Settings, job_id: str, event: str, retry=None) -> None:
    """Send ``event`` if the job asked for it; a failed ``completed`` goes to ``retry``
    (``retry(url, body, delivery, attempt)``, a Celery task in production)."""
    attempt = notify_once(settings, job_id, event)
    if attempt and attempt.outcome == FAILED and event == "completed" and retry:
        retry(attempt.url, attempt.body, attempt.delivery, 1)


def backoff(attempt: int) -> float:
    return BACKOFF_BASE**attempt


def schedule_retry(url: str, body: bytes, delivery: str, attempt: int) -> None:
    """Queue delivery attempt ``attempt`` on the cpu queue after an exponential delay."""
    if attempt > MAX_RETRIES:
        log.error("webhook delivery %s gave up after %d attempts", delivery, attempt)
        return
    from worker.celery_app import app

    app.send_task(
        DELIVER_WEBHOOK_TASK,
        args=[url, body.decode(), "completed", delivery, attempt],
        queue=CPU_QUEUE,
        countdown=backoff(attempt),
    )
