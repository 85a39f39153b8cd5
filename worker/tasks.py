"""Celery tasks: thin adapters from a message carrying a job id to the runner."""

from __future__ import annotations

from shared.queue import RUN_JOB_TASK
from worker.celery_app import app
from worker.runner import run_job as run_job_row


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self, job_id: str) -> None:
    """Run one job; the row, not Celery's result, records what happened."""
    run_job_row(job_id, worker=self.request.hostname or "worker")
