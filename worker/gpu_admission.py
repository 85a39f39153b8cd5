"""Memory admission for several worker processes on one GPU (``--jobs-per-gpu``).

Each process has its own CUDA context and allocator, so nothing on the card stops N of
them from asking for more than it holds; a CUDA out-of-memory error then hits whichever
job allocates last, possibly hours into a run.  Admission turns that race into two
arithmetic checks made from the engine's own estimate (``planning.estimate_bytes``):

* at start-up, ``plan_share`` refuses a ``--jobs-per-gpu`` whose per-process share of
  the card cannot hold the largest job the service accepts (``ATELIER_MAX_SIZE``);
* per job, the engine's own memory check (``planning.available_bytes``) counts only the
  process's share (passed in ``SHARE_ENV``) as free, so a job that does not fit is refused
  before any time is spent on it; ``admit`` is the same check for a batch of jobs;
* ``cap_allocator`` holds PyTorch's allocator to the share, for what the estimate missed.

Each process keeps to its share, so N processes never exceed the card, whatever the
others run.  The card's total memory is a plain number here: the caller reads it from
the device (or the operator gives it), and tests pass one in.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.engines import planning
from worker.engines.errors import OutOfMemory

SHARE_ENV = planning.SHARE_ENV  # bytes this process may use on its GPU
MAX_JOBS_PER_GPU = 8
# The part of the card handed out: the rest absorbs allocator fragmentation and the
# driver's own reservations, which the engine's estimate does not count.
USABLE_FRACTION = 0.9
# Each process's CUDA context (kernels, cuDNN/cuBLAS workspaces) before any tensor.
CONTEXT_BYTES = 768 * 2**20

GIB = 2**30


class AdmissionError(ValueError):
    """A ``--jobs-per-gpu`` plan that cannot fit the card; the message says what to change."""


def job_bytes(width: int, height: int, *, bf16: bool = False, batch: int = 1) -> int:
    """Peak memory of ``batch`` same-shape jobs optimised together at (width, height).

    The engine's per-step estimate for ``batch`` times the pixels (the network's weights
    are shared by the batch), plus the smallest L-BFGS history the engine ever keeps.
    """
    history = planning.MIN_LBFGS_HISTORY * 2 * 3 * width * height * batch * 4  # s, y; fp32
    return planning.estimate_bytes(width, height * batch, bf16) + history


def largest_job_bytes(max_size: int, *, bf16: bool = False, batch: int = 1) -> int:
    """Memory of the largest job the service accepts: a square ``max_size`` output."""
    return job_bytes(max_size, max_size, bf16=bf16, batch=batch)


def share_bytes(total_bytes: int, slots: int) -> int:
    """What one of ``slots`` processes on a card of ``total_bytes`` may use for jobs."""
    return int(total_bytes * USABLE_FRACTION / slots) - CONTEXT_BYTES


def plan_share(total_bytes: int, slots: int, max_size: int, *, bf16: bool = False) -> int:
    """Each process's share of a card of ``total_bytes`` split ``slots`` ways.

    Raises AdmissionError when the largest accepted job (a ``max_size`` square) does not
    fit that share, naming the most processes that would fit and the largest size that
    fits this many.
    """
    if not 1 <= slots <= MAX_JOBS_PER_GPU:
        raise AdmissionError(f"jobs per GPU must be 1 to {MAX_JOBS_PER_GPU}, got {slots}")
    share = share_bytes(total_bytes, slots)
    need = largest_job_bytes(max_size, bf16=bf16)
    if need <= share:
        return share
    fits = max((n for n in range(1, slots) if share_bytes(total_bytes, n) >= need), default=0)
    size = _largest_side(share, bf16)
    advice = f"use --jobs-per-gpu {fits}" if fits else "no --jobs-per-gpu fits it"
    raise AdmissionError(
        f"{slots} jobs per GPU leave {share / GIB:.1f} GiB each of a "
        f"{total_bytes / GIB:.1f} GiB card, but a {max_size}x{max_size} job needs about "
        f"{need / GIB:.1f} GiB: {advice}, or lower ATELIER_MAX_SIZE to {size} or less"
    )


def _largest_side(share: int, bf16: bool, batch: int = 1) -> int:
    """The longest square side whose job (or batch of them) fits ``share``; 0 if none."""

    def fits(side: int) -> bool:
        return job_bytes(side, side, bf16=bf16, batch=batch) <= share

    low, high = 0, 1
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:  # fits(low) and not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def share_from_env(environ: Mapping[str, str]) -> int | None:
    """This process's share in bytes, or None when it has the card to itself."""
    raw = environ.get(SHARE_ENV)
    return int(raw) if raw else None


def admit(
    width: int, height: int, share: int | None, *, bf16: bool = False, batch: int = 1
) -> None:
    """Refuse (OutOfMemory) a job that would take more than this process's share.

    The refusal is final, not a wait: the share is fixed for the process's life, so a
    job that does not fit now never will, and the message says which size would.
    """
    if share is None:
        return
    need = job_bytes(width, height, bf16=bf16, batch=batch)
    if need <= share:
        return
    fit = _largest_side(share, bf16, batch)
    raise OutOfMemory(
        f"a {width}x{height} output needs about {need / GIB:.1f} GiB but this worker shares "
        f"its GPU and may use {share / GIB:.1f} GiB; choose size <= {fit}, or run it on a "
        "worker with fewer --jobs-per-gpu"
    )


def cap_allocator(share: int | None) -> bool:
    """Hold PyTorch's caching allocator in this process to ``share`` bytes of its GPU.

    ``admit`` refuses what the estimate says will not fit; this catches what the estimate
    missed: an allocation past the share raises CUDA's out-of-memory error in this
    process (the job fails ``out_of_memory``) instead of starving a neighbour's job.
    Returns whether a cap was set (never without a share or without CUDA).
    """
    if share is None:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, max(share, 0) / total), 0)
    return True
