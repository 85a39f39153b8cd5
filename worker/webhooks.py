"""Delivering webhooks: the first try inline (no queueing delay), retries as Celery tasks.

Only ``completed`` is retried (with exponential backoff): it is the event clients must
not miss; ``start`` is best effort. Redirects are not followed, so a public target can't
bounce a delivery to a private address.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

from shared.db import session_scope
from shared.errors import InputError
from shared.models import Job
from shared.queue import CPU_QUEUE, DELIVER_WEBHOOK_TASK
from shared.secrets import persistent_secret
from shared.settings import Settings
from shared.webhooks import check_target, encode, payload, sign

log = logging.getLogger(__name__)
TIMEOUT = 5
MAX_RETRIES = 6
BACKOFF_BASE = 2.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def wants(job: Job, event: str) -> bool:
    return bool(job.webhook_url) and event in (job.webhook_events or "").split(",")


def deliver(settings: Settings, url: str, body: bytes, event: str, delivery: str) -> bool:
    """POST once; True on a 2xx answer."""
    try:
        check_target(url, allow_private=settings.webhook_allow_private)
    except InputError as exc:
        log.warning("webhook %s refused: %s", urlsplit(url).hostname, exc.message)
        return False
    timestamp = int(time.time())
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "atelier-webhook/1",
            "Atelier-Event": event,
            "Atelier-Delivery": delivery,
            "Atelier-Signature": sign(
                persistent_secret(settings, "webhook_secret"), timestamp, body
            ),
        },
    )
    try:
        with _opener.open(request, timeout=TIMEOUT) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.info("webhook delivery %s failed: %s", delivery, exc)
        return False


def notify(settings: Settings, job_id: str, event: str, retry=None) -> None:
    """Send ``event`` for the job if it asked for it; on a failed ``completed``, schedule
    ``retry(url, body, delivery, attempt)`` (a Celery task in production)."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or not wants(job, event):
            return
        url, body = job.webhook_url, encode(payload(job, event))
    delivery = uuid.uuid4().hex
    if not deliver(settings, url, body, event, delivery) and event == "completed" and retry:
        retry(url, body, delivery, 1)


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
