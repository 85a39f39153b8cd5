"""Celery tasks: thin adapters from a message to the runner or the webhook sender."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import select

from shared import fairness, states
from shared.db import session_scope
from shared.jobs import mark_enqueued
from shared.models import Job
from shared.queue import (
    DELIVER_WEBHOOK_TASK,
    NOTIFY_TASK,
    RUN_JOB_TASK,
    queue_for,
)
from shared.settings import get_settings
from worker import webhooks
from worker.batching import run_job as run_job_row
from worker.celery_app import app

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self, job_id: str) -> None:
    """Run the job that should go next on the message's queue; the row, not Celery's
    result, records what happened.

    The message is a wake-up call for its queue, ``job_id`` only its label: the job run
    is the queue's best by the fair order (shared/fairness.py), claimed by the usual
    compare-and-set. Every outcome returns normally, so the message is acked
    (``task_acks_late``): a job that is not ours, or was taken over from us
    (superseded), runs on the message of the worker that has it; a job handed back by a
    shutdown drain is published again here, and by the dispatcher if this fails (its
    row waits with ``enqueued_at`` cleared). Only a dead child leaves the message
    unacked, and the claim's compare-and-set makes its redelivery harmless.
    """
    queue = (self.request.delivery_info or {}).get("routing_key")
    run_next(self.app, job_id, queue, worker=self.request.hostname or "worker")


def run_next(celery: Celery, job_id: str, queue: str | None, *, worker: str) -> str | None:
    """Claim and run the best queued job of ``queue`` for the message labelled
    ``job_id``; returns the status it ended in (None: nothing was run to its end here).

    A paused queue runs nothing: the message is dropped and its job waits, unpublished,
    for the dispatcher to send it after the resume. Losing the claim to another worker
    (or a cancel) picks again, a few times; the message's own job is the fallback when
    the queue has nothing else (a job of a kind this deployment no longer maps to a
    queue runs only on its own message).
    """
    settings = get_settings()
    for _ in range(fairness.PICK_TRIES):
        with session_scope(settings.database_url) as session:
            if queue and fairness.is_paused(session, queue):
                fairness.unpublish(session, job_id)
                log.info("queue %s is paused; job %s waits for its resume", queue, job_id)
                return None
            chosen = (fairness.pick_next(session, queue) if queue else None) or job_id
        status = run_job_row(chosen, worker=worker)
        if status == states.QUEUED:
            publish_again(celery, chosen)
        if status is not None or chosen == job_id:
            return status
    return None


def publish_again(celery: Celery, job_id: str) -> None:
    """Put a handed-back job on its queue for another worker, best effort."""
    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            kind = session.scalar(select(Job.kind).where(Job.id == job_id))
        queue = queue_for(kind or "")
        celery.send_task(RUN_JOB_TASK, args=[job_id], queue=queue, task_id=job_id, retry=False)
        with session_scope(settings.database_url) as session:
            mark_enqueued(session, job_id)
    except Exception:
        log.warning(
            "could not publish handed-back job %s; the dispatcher will", job_id, exc_info=True
        )


@app.task(name=NOTIFY_TASK)
def notify_webhook(job_id: str, event: str) -> None:
    """Events decided outside a worker (the dispatcher failing a job that stopped
    heartbeating): queues the delivery task like any other event."""
    webhooks.notify(get_settings(), job_id, event)


@app.task(
    name=DELIVER_WEBHOOK_TASK,
    bind=True,
    max_retries=None,  # webhooks.retry_delay counts the tries
    soft_time_limit=webhooks.TASK_SOFT_TIME_LIMIT,
    time_limit=webhooks.TASK_TIME_LIMIT,
)
def deliver_webhook(self, url: str, body: str, event: str, delivery: str, attempt: int = 0) -> None:
    """One try of a queued delivery (``attempt``: tries before this message was sent);
    a failed ``completed`` comes back as a Celery retry after a longer delay."""
    tries_before = attempt + self.request.retries
    delay = webhooks.attempt(get_settings(), url, body.encode(), event, delivery, tries_before)
    if delay is not None:
        raise self.retry(countdown=delay)
