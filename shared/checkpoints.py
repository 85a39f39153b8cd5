"""Where a job's resume checkpoints live, and their removal once the job has ended.

Every kind that resumes (style_transfer, fine_tune) keeps attempt ``n``'s checkpoint at
``jobs/<id>/checkpoint-<n>.pt``: next to the inputs, outside every attempt's prefix (a
drained attempt's prefix is deleted when it is handed back) and never a file row, so
never a download. Torch-free: the web (a queued job canceled after a requeue) and the
dispatcher (a job failed on exhausted attempts) remove them as the worker does.
"""

from __future__ import annotations

import logging

from shared.storage import Storage, job_key

log = logging.getLogger(__name__)


def checkpoint_key(job_id: str, attempt: int) -> str:
    """Where ``attempt`` of the job keeps its checkpoint."""
    return job_key(job_id, f"checkpoint-{int(attempt)}.pt")


def delete_job_checkpoints(storage: Storage, job_id: str, attempts: int) -> None:
    """Remove the checkpoints of attempts 1..``attempts``, best effort: a failure is
    logged, and the job's folder goes anyway when it expires."""
    for attempt in range(1, attempts + 1):
        try:
            storage.delete_prefix(checkpoint_key(job_id, attempt))
        except Exception:
            log.warning("job %s: could not delete a checkpoint", job_id, exc_info=True)
