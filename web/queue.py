"""Sending jobs to the workers by task name; the web never imports worker code or torch."""

from __future__ import annotations

import logging

from celery import Celery
from flask import Flask, current_app

from shared import webhooks, workers
from shared.queue import RUN_JOB_TASK, celery_config, queue_for
from shared.settings import Settings

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
    queue = queue_for(kind)  # a kind without a spec is a bug, not a broker outage
    try:
        client().send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=queue,
            task_id=job_id,
            retry=False,
        )
        return True
    except Exception:  # broker down: the job row waits for the dispatcher
        log.warning("could not enqueue job %s; the dispatcher will retry", job_id, exc_info=True)
        return False


def notify(job_id: str, event: str) -> None:
    """Queue a webhook event the web decided (a queued job canceled) on the cpu queue.

    The same enqueue as the workers': the request only reads the row and publishes, and
    no thread is started per event; the cpu workers deliver and retry it.
    """
    webhooks.enqueue(current_app.config["ATELIER"], client(), job_id, event)


def revoke(job_id: str) -> None:
    """Drop a queued job's message if a worker already holds it; harmless if it doesn't."""
    try:
        client().control.revoke(job_id)
    except Exception:
        log.warning("could not revoke %s; the worker's claim will skip it", job_id, exc_info=True)


def count_workers(settings: Settings) -> int:
    """Worker nodes with a live heartbeat in Redis (:mod:`shared.workers`).

    Not a broadcast ping: that made every worker answer each ``/healthz`` and waited out a
    timeout. Raises ``redis.RedisError`` when Redis is unreachable.
    """
    return workers.count_live(workers.redis_client(settings.broker_url))


def init_app(app: Flask) -> None:
    app.extensions["atelier_celery"] = make_client(app.config["ATELIER"])
