"""Webhooks from the worker: events are queued on the cpu queue, tried and retried there.

Nothing is sent on a job's thread: a target that hangs or drips costs the job nothing,
and a GPU worker never waits on someone's web server. Only ``completed`` is retried (with
exponential backoff, as Celery retries of the delivery task): it is the event clients
must not miss; ``start``, ``progress`` and ``output`` are best effort, and the last two
are sent at most every ``shared.webhooks.PROGRESS_INTERVAL`` seconds per job
(worker/progress.py).
"""

from __future__ import annotations

import logging

from celery import Celery

from shared.queue import celery_config
from shared.settings import Settings
from shared.webhooks import DEADLINE, FAILED, Delivery, deliver, enqueue

log = logging.getLogger(__name__)
MAX_TRIES = 6
BACKOFF_BASE = 2.0
# the delivery task's Celery limits: the attempt's own deadline, plus room for a system
# DNS lookup, which no socket timeout interrupts
TASK_SOFT_TIME_LIMIT = int(DEADLINE) * 3
TASK_TIME_LIMIT = TASK_SOFT_TIME_LIMIT + 15


def notify(settings: Settings, job_id: str, event: str) -> Delivery | None:
    """Queue ``event``'s delivery on the cpu queue if the job asked for it (None if it
    did not); retries are the delivery task's own."""
    return enqueue(settings, sender(settings), job_id, event)


_senders: dict[str, Celery] = {}


def sender(settings: Settings) -> Celery:
    """A Celery client that publishes tasks by name, one per broker, made on first use.

    Not the worker's app (worker.celery_app): that module includes worker.tasks, which
    imports the runner, which sends webhooks, so using it here made an import cycle.
    Like the web's client it fails fast when Redis is down: a job's thread never waits
    on a webhook.
    """
    client = _senders.get(settings.broker_url)
    if client is None:
        client = Celery("atelier-webhooks", set_as_current=False)
        client.conf.update(celery_config(settings))
        client.conf.broker_connection_timeout = 2
        client.conf.broker_connection_max_retries = 0
        client = _senders.setdefault(settings.broker_url, client)
    return client


def backoff(tries: int) -> float:
    """Seconds before the next try of a delivery tried ``tries`` times: 2, 4, 8, 16, 32."""
    return BACKOFF_BASE**tries


def retry_delay(event: str, outcome: str, tries: int, delivery: str) -> float | None:
    """When to try again after ``tries`` tries ended in ``outcome``; None: done."""
    if outcome != FAILED or event != "completed":
        return None
    if tries >= MAX_TRIES:
        log.error("webhook delivery %s gave up after %d tries", delivery, tries)
        return None
    return backoff(tries)


def attempt(
    settings: Settings, url: str, body: bytes, event: str, delivery: str, tries_before: int
) -> float | None:
    """One try of a queued delivery; returns the delay before the next, or None."""
    outcome = deliver(settings, url, body, event, delivery)
    return retry_delay(event, outcome, tries_before + 1, delivery)
