"""Runs one job row of any kind from claim to terminal state. Celery-free, so tests (and
``worker.tasks``) call it directly.

claim (queued→starting, returns the fence) → the job's row as a RunContext → the kind's
runner (worker/kinds/), which loads its inputs, marks the job processing, runs its
engine with progress and stores its outputs → their rows → succeeded. Every exit path
ends in exactly one terminal state or, when the job was taken elsewhere (Superseded),
touches nothing more and deletes this attempt's files; a drain that ran out hands it
back. Nothing here knows a kind: what to tell a person when a kind's job runs out of
memory or time comes from its runner (``KindRunner``).
"""

from __future__ import annotations

import gc
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared import events, states
from shared.db import session_scope
from shared.jobs import OUTPUT_ROLES, attempt_prefix, mark_enqueued
from shared.kinds import load_modules
from shared.kinds import sweep as sweeps
from shared.models import Job
from shared.queue import RUN_JOB_TASK
from shared.settings import Settings, get_settings
from shared.storage import Storage, open_storage
from shared.timeutil import utcnow
from worker import webhooks
from worker.engines.errors import Canceled, EngineError
from worker.kinds import DEFAULT_HINT, RunContext, runner_for
from worker.progress import Drained, Heartbeat, record_outputs

log = logging.getLogger(__name__)

# roles of the files a worker writes (the rest of a job's files are its inputs)


RunClaimed = Callable[[states.Fence, Settings, Storage], str | None]


def run_job(
    job_id: str, *, worker: str, settings: Settings | None = None, run: RunClaimed | None = None
) -> str | None:
    """Run the job if this worker wins the claim; returns its final status.

    None: not ours (another worker has it, or took it over from this one: Superseded);
    ``queued``: handed back because the worker's shutdown drain ran out. Only the call
    whose own fenced transition ended the job sends the ``completed`` webhook, so a job
    sends it once however many workers touched it. ``run`` takes the claimed job from
    there (default :func:`run_alone`); ``worker.batching.run_job`` passes the one that
    lets queued jobs of its shape join it.
    """
    settings = settings or get_settings()
    load_modules(settings.kind_modules)  # a no-op after the worker's start-up loaded them
    with session_scope(settings.database_url) as session:
        fence = states.claim(session, job_id, worker)
    if fence is None:
        log.info("job %s not claimable (already taken, canceled or unknown)", job_id)
        return None
    events.notify(settings, job_id, events.STATUS)  # starting
    storage = open_storage(settings.storage_url, settings)
    return (run or run_alone)(fence, settings, storage)


def run_alone(fence: states.Fence, settings: Settings, storage: Storage) -> str | None:
    """The claimed job's run on its own, from its kind's runner to ``run_job``'s answer."""
    return conclude(fence, settings, storage, lambda: _run_claimed(fence, settings, storage))


def conclude(
    fence: states.Fence, settings: Settings, storage: Storage, attempt: Callable[[], str]
) -> str | None:
    """Run ``attempt`` (what ends the claimed job: returns its terminal status) and what
    follows a claimed job's run, whichever way it went; returns ``run_job``'s answer.

    Superseded: this attempt's files go (unless the job ended on it elsewhere); Drained:
    the job is handed back; an end here: earlier attempts' files go, the ``completed``
    webhook is sent and a sweep whose last child this was is handed over.
    """
    job_id = fence.job_id
    try:
        status = attempt()
    except states.Superseded:
        log.warning(
            "job %s attempt %d was taken over (requeued, canceled or ended elsewhere); "
            "this worker stops it and discards its files",
            job_id,
            fence.attempt,
        )
        if not _ended_on_this_attempt(settings, fence):
            _discard(storage, fence)
        return None
    except Drained:
        return _hand_back(settings, storage, fence)
    _discard_earlier_attempts(storage, fence)
    webhooks.notify(settings, job_id, "completed")
    hand_over_parent(settings, job_id)
    return status


def hand_over_parent(settings: Settings, job_id: str) -> str | None:
    """A job ended here: if it was the last child of a sweep to end, hand the sweep over
    and publish it (shared/kinds/sweep.py); returns the sweep's id then. Best effort:
    the dispatcher's pass hands over, and publishes, what this does not."""
    try:
        with session_scope(settings.database_url) as session:
            parent = sweeps.after_end(session, job_id)
        if parent is None:
            return None
        webhooks.sender(settings).send_task(
            RUN_JOB_TASK, args=[parent], queue=sweeps.SPEC.queue, task_id=parent, retry=False
        )
        with session_scope(settings.database_url) as session:
            mark_enqueued(session, parent)
        return parent
    except Exception:
        log.warning("job %s: its sweep is left to the dispatcher", job_id, exc_info=True)
        return None


def _run_claimed(fence: states.Fence, settings: Settings, storage: Storage) -> str:
    """The kind's runner → its outputs' rows → the terminal state, for a claimed job.

    Every failure becomes a terminal state through a fenced transition, which raises
    Superseded when another attempt owns the job by then (as do the writes on the way).
    """
    kind, oom = None, False
    try:
        ctx = read_context(fence, settings, storage)
        kind = ctx.kind
        runner = runner_for(kind)
        if runner is None:
            log.error("job %s: no runner for kind %r on this worker", fence.job_id, kind)
            return _fail(settings, fence, "internal", _no_runner_message(kind, fence.worker))
        with Heartbeat(settings, fence):
            metrics = runner.run(ctx)
            if ctx.outputs:
                record_outputs(settings, fence, ctx.outputs)
        status = finish(settings, fence, metrics)
    except (states.Superseded, Drained):
        raise
    except Exception as exc:
        oom = is_allocation_failure(exc)
        status = end_on_error(settings, fence, kind, exc)
    if oom:
        release_memory()  # here, once the except clause has dropped the traceback's tensors
    return status


def end_on_error(settings: Settings, fence: states.Fence, kind: str | None, exc: Exception) -> str:
    """The terminal state a claimed job's run that raised ``exc`` ends in: canceled, or
    failed with the code and message a person can act on (Superseded when the job is no
    longer this attempt's). The caller releases memory after an allocation failure."""
    if isinstance(exc, Canceled):
        return _end(settings, fence, states.CANCELED)
    if isinstance(exc, EngineError):
        return _fail(settings, fence, exc.code, str(exc))
    if is_allocation_failure(exc):
        return _out_of_memory(settings, fence, kind, exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return _fail(settings, fence, "timeout", timeout_message(kind, settings))
    return _internal(settings, fence, fence.worker, exc)


def read_context(fence: states.Fence, settings: Settings, storage: Storage) -> RunContext:
    """The job's kind, recorded params and input files, for its runner."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, fence.job_id)
        inputs: dict[str, list[str]] = {}
        for item in job.files:
            if item.attempt is None and item.role not in OUTPUT_ROLES:
                inputs.setdefault(item.role, []).append(item.name)
        return RunContext(fence, job.kind, dict(job.params), inputs, settings, storage)


def _no_runner_message(kind: str, worker: str) -> str:
    return (
        f"the worker {worker} has no runner for job kind {kind!r}; the module that "
        "registers it must be in that worker's ATELIER_KIND_MODULES"
    )


def _discard(storage: Storage, fence: states.Fence) -> None:
    """Delete this attempt's files, best effort: they are no job's outputs (the orphaned
    rest goes with the job's folder when the job is deleted or expires)."""
    try:
        storage.delete_prefix(attempt_prefix(fence.job_id, fence.attempt))
    except Exception:
        log.warning(
            "could not delete the files of job %s attempt %d",
            fence.job_id,
            fence.attempt,
            exc_info=True,
        )


def _ended_on_this_attempt(settings: Settings, fence: states.Fence) -> bool:
    """Whether the job ended while it was still this attempt's (the dispatcher failed it
    past its attempts): then its file rows point at this attempt's files (the last
    preview) and they stay. On any doubt (the database unreachable) they stay too."""
    try:
        with session_scope(settings.database_url) as session:
            job = session.get(Job, fence.job_id)
            return job is not None and (job.status, job.worker, job.attempts) in {
                (status, fence.worker, fence.attempt) for status in states.TERMINAL
            }
    except Exception:
        log.warning("could not read job %s; keeping its files", fence.job_id, exc_info=True)
        return True


def _discard_earlier_attempts(storage: Storage, fence: states.Fence) -> None:
    """Once this attempt ended the job, earlier attempts' leftovers (a worker killed
    mid-job deletes nothing) go too; best effort."""
    for attempt in range(1, fence.attempt):
        _discard(storage, states.Fence(fence.job_id, fence.worker, attempt))


def _hand_back(settings: Settings, storage: Storage, fence: states.Fence) -> str | None:
    """The drain ran out: the job goes back to the queue, not counted as an attempt.

    Files first: the next claim reuses the attempt number, and so its prefix.
    """
    _discard(storage, fence)
    with session_scope(settings.database_url) as session:
        moved = states.hand_back(session, fence)
    if not moved:
        log.warning(
            "job %s attempt %d was taken over before it could be handed back",
            fence.job_id,
            fence.attempt,
        )
        return None
    events.notify(settings, fence.job_id, events.STATUS)
    log.warning("job %s handed back to the queue: the worker is shutting down", fence.job_id)
    return states.QUEUED


def _internal(settings: Settings, fence: states.Fence, worker: str, exc: BaseException) -> str:
    log.exception("job %s failed", fence.job_id)
    return _fail(
        settings,
        fence,
        "internal",
        f"internal error ({type(exc).__name__}: {exc}); the worker {worker} log has the "
        "traceback — please report it",
    )


# What PyTorch's allocators say when an allocation fails (CPU: c10's DefaultCPUAllocator;
# CUDA and other devices raise torch.OutOfMemoryError, a RuntimeError, or say so).
ALLOCATION_FAILURES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _hints(kind: str | None) -> tuple[str, str]:
    """The kind runner's (out of memory, timeout) hints; the generic one when the kind
    is unknown or its runner cannot even be loaded (this runs on the way to failing)."""
    try:
        runner = runner_for(kind) if kind else None
    except Exception:
        runner = None
    if runner is None:
        return DEFAULT_HINT, DEFAULT_HINT
    return runner.out_of_memory_hint, runner.timeout_hint


def is_allocation_failure(exc: BaseException) -> bool:
    """True for a failed memory allocation: MemoryError or a PyTorch out-of-memory error.

    Matched by name and message, so the web-free runner need not import torch to tell;
    any other RuntimeError is a bug and stays ``internal``.
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in ALLOCATION_FAILURES)


def out_of_memory_message(kind: str | None, exc: BaseException) -> str:
    """What ran out and what to change, for ``job.error.message``."""
    lines = str(exc).strip().splitlines()
    detail = lines[0].split("DefaultCPUAllocator: ")[-1][:300] if lines else type(exc).__name__
    hint = _hints(kind)[0]
    return (
        f"the worker ran out of memory running this job ({detail}); {hint}, or retry when "
        "the worker is less busy"
    )


def timeout_message(kind: str | None, settings: Settings) -> str:
    """What to change when the job ran past ATELIER_SOFT_TIME_LIMIT."""
    return (
        f"the job ran past the {settings.soft_time_limit} s limit; {_hints(kind)[1]}, "
        "or raise ATELIER_SOFT_TIME_LIMIT"
    )


def _out_of_memory(
    settings: Settings, fence: states.Fence, kind: str | None, exc: BaseException
) -> str:
    """End the job ``out_of_memory``; the worker process itself carries on with the next."""
    log.warning("job %s ran out of memory", fence.job_id, exc_info=exc)
    traceback.clear_frames(exc.__traceback__)  # drop the job's tensors before writing
    return _fail(settings, fence, "out_of_memory", out_of_memory_message(kind, exc))


def release_memory() -> None:
    """Give a failed job's memory back (collect its cycles, empty CUDA's cache).

    The failure is caught in this process, so the worker keeps serving; the next job
    should not start with the previous one's tensors still cached.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _end(settings: Settings, fence: states.Fence, status: str, values: dict | None = None) -> str:
    """Move this attempt's running job to ``status`` (only a processing job can succeed);
    Superseded when the job is no longer this attempt's."""
    expect = states.PROCESSING if status == states.SUCCEEDED else states.RUNNING
    with session_scope(settings.database_url) as session:
        moved = states.transition(
            session, fence.job_id, status, expect=expect, values=values, fence=fence
        )
    if not moved:
        raise states.Superseded(fence)
    events.notify(settings, fence.job_id, events.STATUS)
    return status


def _fail(settings: Settings, fence: states.Fence, code: str, message: str) -> str:
    """This attempt's job → failed; Superseded when the job is no longer this attempt's."""
    with session_scope(settings.database_url) as session:
        moved = states.fail(session, fence.job_id, code, message, fence=fence)
    if not moved:
        raise states.Superseded(fence)
    events.notify(settings, fence.job_id, events.STATUS)
    return states.FAILED


def finish(settings: Settings, fence: states.Fence, metrics: dict[str, Any]) -> str:
    """processing → succeeded with the run's metrics (and its queue and run seconds)."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, fence.job_id)
        now = utcnow()
        summary = {
            "queue_seconds": round((job.started_at - job.created_at).total_seconds(), 3),
            "run_seconds": round((now - job.started_at).total_seconds(), 3),
            "attempts": job.attempts,
            **metrics,
        }
        total = job.progress_total or job.progress_current
    return _end(
        settings,
        fence,
        states.SUCCEEDED,
        {
            "metrics": summary,
            "finished_at": now,
            "progress_current": total,
            "eta_seconds": 0,
            "preview_step": total,
        },
    )
