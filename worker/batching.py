"""Batched optimisation fed by the queue: a claimed style job takes queued jobs of its
shape with it, and they run through one ``stylize_batch`` (worker/engines/batch_style.py).

Only with ATELIER_BATCH_SIZE (K) above 1: :func:`run_job` (what the worker's tasks call)
hands the runner's claimed job to :func:`run_led`.
When that lead is a style job the engine can batch (``batch_key`` is not None, and it
has no region or protect mask, which ``batch_key`` does not see), the next queued style
jobs of its queue are read in fair order (at most ``CANDIDATES_PER_SLOT`` × K, never
claimed before, so none has a checkpoint to resume from), their inputs are loaded as
their kind runner loads them, and up to K − 1 whose key equals the lead's are claimed by
the usual compare-and-set. A job another worker claims first is simply skipped; its own
message later wakes a worker that finds the next job or nothing, as any message whose
job ran elsewhere does (shared/fairness.py). When none matches but the queue holds other
jobs, the worker waits ATELIER_BATCH_WAIT_MS once and looks again; an empty queue is not
waited on, and a lead with no partner runs alone at once, exactly as without batching.

Every member is its own job from claim to end: its RunContext and fence, heartbeat,
progress, previews, cancel check and stored result are the lone path's
(worker/kinds/style_transfer.py), and it ends in its own terminal state through the
runner's own functions. A member whose callback stops it (canceled, superseded, handed
back by a drain) ends at that step and leaves the batch; the others go on. Batched jobs
write no checkpoints: one requeued after its worker died starts over.

Celery-free, like the runner: tests call :func:`run_job` directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import events, fairness, states
from shared.checkpoints import checkpoint_key
from shared.db import session_scope
from shared.models import Job
from shared.settings import Settings, get_settings
from shared.storage import Storage
from worker import runner
from worker.kinds import RunContext
from worker.kinds import style_transfer as style_kind
from worker.progress import Drained, Heartbeat, drain_requested, record_outputs

if TYPE_CHECKING:
    from worker.engines.batch_style import Outcome
    from worker.engines.style_transfer import StyleProgress

log = logging.getLogger(__name__)

KIND = "style_transfer"
# queued jobs looked at per batch slot: enough to find partners behind a few jobs of
# other shapes, few enough that decoding their images stays a small cost of the batch
CANDIDATES_PER_SLOT = 4


@dataclass
class Member:
    """One job of a batch (or a candidate for one): its context, loaded inputs, key."""

    ctx: RunContext
    inputs: style_kind.StyleInputs
    key: Hashable | None
    heartbeat: Heartbeat | None = None
    status: str | None = None  # run_job's answer for this job, once it ended
    ended: bool = False

    def start_heartbeat(self, settings: Settings) -> None:
        self.heartbeat = Heartbeat(settings, self.ctx.fence).__enter__()

    def stop_heartbeat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.__exit__(None, None, None)
            self.heartbeat = None


def run_job(job_id: str, *, worker: str, settings: Settings | None = None) -> str | None:
    """``runner.run_job``, with queued jobs of the claimed job's shape joining it when
    ATELIER_BATCH_SIZE is above 1 (the worker's tasks run jobs through this)."""
    settings = settings or get_settings()
    run = run_led if settings.batch_size > 1 else None
    return runner.run_job(job_id, worker=worker, settings=settings, run=run)


def run_led(fence: states.Fence, settings: Settings, storage: Storage) -> str | None:
    """Run the claimed job of ``fence`` with the queued jobs of its shape that join it;
    returns ``run_job``'s answer for it. A job that cannot batch, or finds no partner,
    runs alone through the runner as it would without batching."""
    lead = _peek(fence, settings, storage) if fence.attempt == 1 else None
    if lead is None:
        return runner.run_alone(fence, settings, storage)
    lead.start_heartbeat(settings)  # looking at candidates may take a while
    members: list[Member] = []
    try:
        _collect(lead, members, settings, storage)
    except Exception:
        log.warning("job %s: looking for jobs to batch with failed", fence.job_id, exc_info=True)
    if not members:
        lead.stop_heartbeat()
        return runner.run_alone(fence, settings, storage)
    return _run_batch([lead, *members], settings, storage)


def batch_key_of(inputs: style_kind.StyleInputs) -> Hashable | None:
    """The engine's ``batch_key``, None for a job it must run alone: besides its own
    cases, one with a region mask or a protect mask (``stylize`` takes those)."""
    from worker.engines.batch_style import batch_key

    if inputs.mask is not None or inputs.protect is not None:
        return None
    return batch_key(inputs.content, inputs.styles, inputs.params)


def queued_in_fair_order(session: Session, queue: str, limit: int) -> list[str]:
    """Up to ``limit`` queued, never claimed style jobs of ``queue``, in the order of their
    queue position (``fairness.position_column``: the order ``fairness.pick_next`` serves
    if nothing new arrives), which decides it here too.

    A position costs a few correlated reads, so only the jobs that can be among the first
    ``limit`` are placed: the fair order goes by priority, then by round (a job's place
    among its owner's queued jobs of its priority), so a job with ``limit`` such jobs in
    earlier rounds or higher priorities is never one of them.
    """
    turn = func.row_number().over(
        partition_by=(Job.priority, Job.owner), order_by=(Job.created_at, Job.id)
    )
    waiting = (
        select(Job.id, Job.kind, Job.attempts, Job.priority, turn.label("turn"))
        .where(Job.status == states.QUEUED, Job.queue == queue)
        .subquery()
    )
    band = func.rank().over(order_by=(waiting.c.priority.desc(), waiting.c.turn))
    candidates = (
        select(waiting.c.id, band.label("band"))
        .where(waiting.c.kind == KIND, waiting.c.attempts == 0)
        .subquery()
    )
    position = fairness.position_column(session.get_bind().dialect.name)
    placed = (
        select(Job.id, position)
        .where(Job.id.in_(select(candidates.c.id).where(candidates.c.band <= limit)))
        .order_by(position, Job.created_at, Job.id)
        .limit(limit)
    )
    return list(session.scalars(placed))


def _peek(fence: states.Fence, settings: Settings, storage: Storage) -> Member | None:
    """The job's inputs and batch key, loaded as its kind runner loads them; None for
    another kind or inputs that do not load (the job then fails alone, as it would)."""
    try:
        ctx = runner.read_context(fence, settings, storage)
        if ctx.kind != KIND or _has_checkpoint(ctx):
            return None
        inputs = style_kind.load_inputs(ctx)
    except Exception:
        log.info("job %s cannot batch; it runs alone", fence.job_id, exc_info=True)
        return None
    key = batch_key_of(inputs)
    return None if key is None else Member(ctx, inputs, key)


def _has_checkpoint(ctx: RunContext) -> bool:
    """A job handed back by a drain left a checkpoint: it resumes from it, alone (a
    batch starts every job over)."""
    attempts = range(max(ctx.fence.attempt, 1), 0, -1)
    return any(ctx.storage.exists(checkpoint_key(ctx.job_id, a)) for a in attempts)


def _candidate(job_id: str, lead: Member, settings: Settings, storage: Storage) -> Member | None:
    """A queued job, loaded unclaimed (attempt 0 in its placeholder fence), when it could
    join ``lead``: of another size it never shares a plan, so its images stay unread."""
    fence = states.Fence(job_id, lead.ctx.fence.worker, 0)
    try:
        ctx = runner.read_context(fence, settings, storage)
    except Exception:
        return None
    if ctx.kind != KIND or ctx.params.get("size") != lead.ctx.params.get("size"):
        return None
    return _peek(fence, settings, storage)


def _collect(lead: Member, members: list[Member], settings: Settings, storage: Storage) -> None:
    """Claim up to K − 1 queued jobs with the lead's key into ``members``, looking twice
    at most: again after ATELIER_BATCH_WAIT_MS when none matched but the queue was not
    empty. Each claimed job's heartbeat starts at its claim."""
    wanted = settings.batch_size - 1
    seen: dict[str, Member | None] = {}
    for look in range(2):
        if drain_requested():
            return  # the worker is shutting down: take nothing more
        with session_scope(settings.database_url) as session:
            queue = session.scalar(select(Job.queue).where(Job.id == lead.ctx.job_id))
            if queue is None or fairness.is_paused(session, queue):
                return
            ids = queued_in_fair_order(session, queue, CANDIDATES_PER_SLOT * settings.batch_size)
            others = bool(ids) or _any_queued(session, queue)
        for job_id in ids:
            if len(members) == wanted:
                return
            if job_id not in seen:
                seen[job_id] = _candidate(job_id, lead, settings, storage)
            candidate = seen[job_id]
            if candidate is None or candidate.key != lead.key:
                continue
            member = _claim(candidate, settings)
            if member is not None:
                members.append(member)
        if members or not others or look == 1 or settings.batch_wait_ms == 0:
            return
        log.info(
            "job %s: no queued job of its shape; waiting %d ms once for one",
            lead.ctx.job_id,
            settings.batch_wait_ms,
        )
        time.sleep(settings.batch_wait_ms / 1000)


def _any_queued(session: Session, queue: str) -> bool:
    return (
        session.scalar(
            select(Job.id).where(Job.status == states.QUEUED, Job.queue == queue).limit(1)
        )
        is not None
    )


def _claim(candidate: Member, settings: Settings) -> Member | None:
    """Claim a matching job for the batch; None when another worker (or a cancel) was
    first. Its context gets the claim's fence."""
    job_id = candidate.ctx.job_id
    with session_scope(settings.database_url) as session:
        fence = states.claim(session, job_id, candidate.ctx.fence.worker)
    if fence is None:
        return None
    events.notify(settings, job_id, events.STATUS)  # starting
    ctx = replace(candidate.ctx, fence=fence, outputs=[], reporter=None)
    member = Member(ctx, candidate.inputs, candidate.key)
    member.start_heartbeat(settings)
    return member


class _TimeLimit:
    """Whether the task's soft time limit has landed anywhere in the batch.

    Celery raises it once, wherever the main thread is: when that is one job's progress
    callback (or its end), the engine ends only that job and the batch would run on to the
    hard limit, which kills the worker and requeues every other job to start over. Told
    here, each other job ends ``timeout`` at its next step, as its lone run would have.
    """

    def __init__(self) -> None:
        self.passed = False

    def note(self, exc: BaseException) -> None:
        if isinstance(exc, SoftTimeLimitExceeded):
            self.passed = True


def _run_batch(members: list[Member], settings: Settings, storage: Storage) -> str | None:
    """Optimise the claimed jobs as one batch and end each in its own state; returns the
    lead's (``members[0]``) ``run_job`` answer."""
    log.info("batch of %d jobs: %s", len(members), ", ".join(m.ctx.job_id for m in members))
    time_limit = _TimeLimit()
    try:
        running = []
        for member in members:
            try:
                if time_limit.passed:
                    raise SoftTimeLimitExceeded()
                member.ctx.mark_processing()
            except Exception as exc:
                time_limit.note(exc)
                _end(member, exc, settings, storage, 0.0, time_limit)
                continue
            running.append(member)
        started = time.monotonic()
        try:
            from worker.engines.batch_style import BatchItem, stylize_batch

            items = [
                BatchItem(
                    m.inputs.content,
                    m.inputs.styles,
                    m.inputs.params,
                    _callback(m, settings, storage, started, time_limit),
                )
                for m in running
            ]
            outcomes: list[Outcome] = stylize_batch(
                items, max_batch=settings.batch_size, interrupts=(SoftTimeLimitExceeded,)
            )
        except Exception as exc:  # the batch as a whole failed (weights, memory, time)
            outcomes = [exc] * len(running)
        for member, outcome in zip(running, outcomes, strict=True):
            _end(member, outcome, settings, storage, started, time_limit)
    finally:
        for member in members:
            member.stop_heartbeat()
    return members[0].status


def _callback(
    member: Member, settings: Settings, storage: Storage, started: float, time_limit: _TimeLimit
) -> Callable[[StyleProgress], None]:
    """The lone path's progress callback; what stops the job ends it at that step (the
    engine then drops its row from the batch), and so does the batch's soft time limit."""
    report = style_kind.progress_callback(member.ctx)

    def on_progress(progress: StyleProgress) -> None:
        try:
            if time_limit.passed:
                raise SoftTimeLimitExceeded()
            report(progress)
        except Exception as exc:
            time_limit.note(exc)
            _end(member, exc, settings, storage, started, time_limit)
            raise

    return on_progress


def _end(
    member: Member,
    outcome: Outcome,
    settings: Settings,
    storage: Storage,
    started: float,
    time_limit: _TimeLimit,
) -> None:
    """End one job from its outcome as its lone run would end (once). A job that cannot
    be ended (its database gone) is logged and left, as a lone run's would be, to the
    dispatcher's heartbeat rule; the other jobs of the batch still end."""
    if member.ended:
        return
    member.ended = True
    fence = member.ctx.fence
    try:
        member.status = runner.conclude(
            fence, settings, storage, lambda: _settle(member, outcome, settings, started)
        )
    except Exception as exc:
        time_limit.note(exc)
        member.stop_heartbeat()
        log.exception("job %s could not be ended here", fence.job_id)


def _settle(member: Member, outcome: Outcome, settings: Settings, started: float) -> str:
    """The job's terminal status: its result stored, or the error mapped as the runner
    maps a lone run's (Superseded and Drained go up to ``runner.conclude``)."""
    ctx, oom = member.ctx, False
    try:
        if isinstance(outcome, Exception):
            raise outcome
        metrics = style_kind.store_result(ctx, outcome, started)
        if ctx.outputs:
            record_outputs(settings, ctx.fence, ctx.outputs)
        member.stop_heartbeat()
        return runner.finish(settings, ctx.fence, metrics)
    except (states.Superseded, Drained):
        member.stop_heartbeat()
        raise
    except Exception as exc:
        member.stop_heartbeat()
        oom = runner.is_allocation_failure(exc)
        status = runner.end_on_error(settings, ctx.fence, KIND, exc)
    if oom:
        runner.release_memory()
    return status
