"""Sending jobs to the workers by task name; the web never imports worker code or torch."""

from __future__ import annotations

import logging
import threading

from celery import Celery
from flask import Flask, current_app

from shared.queue import (
    CPU_QUEUE,
    DELIVER_WEBHOOK_TASK,
    QUEUE_FOR_KIND,
    RUN_JOB_TASK,
    celery_config,
)
from shared.settings import Settings
from shared.webhooks import FAILED, notify_once

log = logging.getLogger(__name__)


def make_client(settings: Settings) -> Celery:
    client = Celery("atelier-web")
    client.conf.update(celery_config(settings))
    # fail fast when Redis is down: the row is committed and the outbox sweeper retries
    client.conf.broker_connection_timeout = 2
    client.conf.broker_connection_max_retries = 0
    return client


def client() -> Celery:
    return current_app.extensions["atelier_celery"]


def enqueue(job_id: str, kind: str) -> bool:
    """Publish the job id; False (logged) when the broker is unreachable."""
    try:
        client().send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=QUEUE_FOR_KIND[kind],
            task_id=job_id,
            retry=False,
        )
        return True
    except Exception:  # broker down: the job row waits for the dispatcher
        log.warning("could not enqueue job %s; the dispatcher will retry", job_id, exc_info=True)
        return False


def notify(job_id: str, event: str) -> None:
    """Send a webhook event the web decided (a queued job canceled) from a thread.

    The first try happens here, not in a worker queue where it could wait behind a long
    job; a failed ``completed`` is handed to the workers for retries with backoff.
    """
    settings, celery = current_app.config["ATELIER"], client()

    def send() -> None:
        attempt = notify_once(settings, job_id, event)
        if attempt is None or attempt.outcome != FAILED or event != "completed":
            return
        try:
            celery.send_task(
                DELIVER_WEBHOOK_TASK,
                args=[attempt.url, attempt.body.decode(), event, attempt.delivery, 1],
                queue=CPU_QUEUE,
                countdown=2,
                retry=False,
            )
        except Exception:
            log.warning("could not queue the webhook retry of %s", job_id, exc_info=True)

    threading.Thread(target=send, name=f"webhook-{job_id[:8]}", daemon=True).start()


def revoke(job_id: str) -> None:
    """Drop a queued job's message if a worker already holds it; harmless if it doesn't."""
    try:
        client().control.revoke(job_id)
    except Exception:
        log.warning("could not revoke %s; the worker's claim will skip it", job_id, exc_info=True)


def count_workers(timeout: float = 0.5) -> int:
    replies = client().control.ping(timeout=timeout) or []
    return len(replies)


def init_app(app: Flask) -> None:
    app.extensions["atelier_celery"] = make_client(app.config["ATELIER"])
