"""A running attempt's checkpoints: the newest one to continue from, storing its own,
and deleting them all when the job ends here (shared/checkpoints.py has the keys).

Each attempt writes only its own key, so a frozen attempt that wakes up overwrites
nothing its successor wrote; a new attempt continues from the newest checkpoint of an
attempt up to its own. Storage failures are logged, never fatal: a job without a
checkpoint starts over, which is never wrong, only slower.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shared.checkpoints import checkpoint_key, delete_job_checkpoints
from worker.kinds import RunContext

log = logging.getLogger(__name__)


def read_checkpoint(ctx: RunContext) -> bytes | None:
    """The newest checkpoint of this attempt or an earlier one; None when there is none
    or storage fails."""
    for attempt in range(ctx.fence.attempt, 0, -1):
        key = checkpoint_key(ctx.job_id, attempt)
        try:
            if not ctx.storage.exists(key):
                continue
            with ctx.storage.open(key) as handle:
                data = handle.read()
        except Exception:
            log.warning("job %s: could not read %s; starting over", ctx.job_id, key, exc_info=True)
            return None
        log.info("job %s attempt %d continues from %s", ctx.job_id, ctx.fence.attempt, key)
        return data
    return None


def checkpoint_sink(ctx: RunContext) -> Callable[[bytes], None]:
    """Stores the engine's checkpoint bytes as this attempt's; a failed write is logged
    (the job goes on, with an older checkpoint or none to resume from)."""
    key = checkpoint_key(ctx.job_id, ctx.fence.attempt)

    def store(data: bytes) -> None:
        try:
            ctx.storage.put_bytes(key, data)
        except Exception:
            log.warning("job %s: could not store its checkpoint", ctx.job_id, exc_info=True)

    return store


def delete_checkpoints(ctx: RunContext) -> None:
    """Remove every attempt's checkpoint of the job (it ended here), best effort."""
    delete_job_checkpoints(ctx.storage, ctx.job_id, ctx.fence.attempt)
