"""Celery tasks: thin adapters from a message to the runner or the webhook sender."""

from __future__ import annotations

from shared.queue import DELIVER_WEBHOOK_TASK, NOTIFY_TASK, RUN_JOB_TASK
from shared.settings import get_settings
from shared.webhooks import FAILED, deliver
from worker import webhooks
from worker.celery_app import app
from worker.runner import run_job as run_job_row


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self, job_id: str) -> None:
    """Run one job; the row, not Celery's result, records what happened."""
    run_job_row(job_id, worker=self.request.hostname or "worker")


@app.task(name=NOTIFY_TASK)
def notify_webhook(job_id: str, event: str) -> None:
    """Events decided outside a worker (a queued job canceled by the web)."""
    webhooks.notify(get_settings(), job_id, event, retry=webhooks.schedule_retry)


@app.task(name=DELIVER_WEBHOOK_TASK)
def deliver_webhook(url: str, body: str, event: str, delivery: str, attempt: int) -> None:
    """One retry of a failed delivery; schedules the next one with a longer delay."""
    outcome = deliver(get_settings(), url, body.encode(), event, delivery)
    if outcome == FAILED:
        webhooks.schedule_retry(url, body.encode(), delivery, attempt + 1)
