"""Checkpoints of a running style job, so a requeued job continues instead of restarting.

A checkpoint is the optimisation's whole state at one point: which scale and how many of
its steps are done, the current image, the optimiser's state (L-BFGS history or Adam's
moments), the Adam iterate average, the last loss terms, the per-scale log the metrics
report and the global RNG state.  It is serialised with ``torch.save`` as plain tensors,
numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` reads it back
without running any pickled code.

A checkpoint carries a fingerprint of what the run depends on (the resolved params, the
input sizes, the scale plan): bytes that belong to another run, to an older format or
that do not parse are ignored with a log line and the run starts over; they never fail
the job.

When to save is decided by :class:`Checkpointer`: at every scale boundary (the engine
asks) and, inside a scale, every ``seconds`` (the worker's interval) or every ``steps``
optimiser steps (a deterministic trigger that tests use instead of a clock).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """The state of one run after ``step`` optimiser steps of scale ``scale`` (0-based).

    ``optimizer`` and ``ema`` are None at a scale boundary (``step == 0``): the next
    scale starts a fresh optimiser from ``image`` upsampled, as an uninterrupted run does.
    """

    fingerprint: str
    scale: int
    step: int
    total_step: int
    image: torch.Tensor
    optimizer: dict[str, Any] | None = None
    ema: torch.Tensor | None = None
    terms: dict[str, torch.Tensor | None] | None = None
    scale_log: list[dict[str, Any]] = field(default_factory=list)
    rng: torch.Tensor | None = None

    def to_bytes(self) -> bytes:
        """The checkpoint as ``torch.save`` bytes (tensors moved to the CPU)."""
        payload = {
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "scale": self.scale,
            "step": self.step,
            "total_step": self.total_step,
            "image": _cpu(self.image),
            "optimizer": _cpu(self.optimizer),
            "ema": _cpu(self.ema),
            "terms": _cpu(self.terms),
            "scale_log": self.scale_log,
            "rng": self.rng,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()


def fingerprint(params: dict[str, Any], **inputs: Any) -> str:
    """A short hash of everything a checkpoint's state depends on (JSON-serialisable)."""
    text = json.dumps({"params": params, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(data: bytes | None, expected: str) -> Checkpoint | None:
    """The checkpoint in ``data`` when it is this run's (``expected`` fingerprint);
    None, with a log line saying why, when it is absent, corrupt, of another format or
    of another run."""
    if not data:
        return None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated bytes must never fail the job
        log.warning(
            "ignoring an unreadable checkpoint (%s: %s); starting over", type(exc).__name__, exc
        )
        return None
    if not isinstance(payload, dict) or payload.get("version") != FORMAT_VERSION:
        log.warning("ignoring a checkpoint of another format; starting over")
        return None
    if payload.get("fingerprint") != expected:
        log.warning("ignoring a checkpoint of another run (params or inputs differ); starting over")
        return None
    try:
        checkpoint = Checkpoint(
            fingerprint=payload["fingerprint"],
            scale=int(payload["scale"]),
            step=int(payload["step"]),
            total_step=int(payload["total_step"]),
            image=payload["image"],
            optimizer=payload["optimizer"],
            ema=payload["ema"],
            terms=payload["terms"],
            scale_log=list(payload["scale_log"]),
            rng=payload["rng"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring an incomplete checkpoint (%s); starting over", exc)
        return None
    if not isinstance(checkpoint.image, torch.Tensor):
        log.warning("ignoring a checkpoint without an image; starting over")
        return None
    return checkpoint


class Checkpointer:
    """Decides when a checkpoint is due and hands its bytes to ``sink``.

    ``steps`` (when set) makes a checkpoint due after every ``steps`` optimiser steps of
    the whole run, independent of time; otherwise one is due once ``seconds`` passed on
    ``clock`` since the last (0: after every step).  ``count`` and ``bytes`` say what was
    written, for the job's metrics.
    """

    def __init__(
        self,
        fingerprint: str,
        sink: Callable[[bytes], None],
        *,
        seconds: float = 30.0,
        steps: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        if steps is not None and steps < 1:
            raise ValueError("steps must be >= 1")
        self.fingerprint = fingerprint
        self.sink = sink
        self.seconds = seconds
        self.steps = steps
        self.clock = clock
        self.last = clock()
        self.count = 0
        self.bytes = 0

    def due(self, total_step: int) -> bool:
        """Whether a mid-scale checkpoint is due after run step ``total_step``."""
        if self.steps is not None:
            return total_step % self.steps == 0
        return self.clock() - self.last >= self.seconds

    def save(self, checkpoint: Checkpoint) -> None:
        data = checkpoint.to_bytes()
        self.sink(data)
        self.last = self.clock()
        self.count += 1
        self.bytes += len(data)


def _cpu(value: Any) -> Any:
    """``value`` with every tensor detached, cloned and on the CPU (dicts, lists kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(item) for item in value)
    return value
