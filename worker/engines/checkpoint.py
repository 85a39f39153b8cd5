"""Checkpoints of a running job, so a requeued job continues instead of restarting.

A style checkpoint (:class:`Checkpoint`) is the optimisation's whole state at one point:
which scale and how many of its steps are done, the current image, the optimiser's state
(L-BFGS history or Adam's moments), the Adam iterate average, the last loss terms, the
per-scale log the metrics report and the global RNG state.  A fine-tune checkpoint
(:class:`TrainingCheckpoint`) is the state after a whole network epoch: weights,
optimiser, step counter (the LR schedule is a function of it), the best epoch so far and
both RNG states (the global one and the generator of data order and augmentation).
Either is serialised with ``torch.save`` as plain tensors, numbers, strings, lists and
dicts, so ``torch.load(weights_only=True)`` reads it back without running any pickled
code.

A checkpoint carries a fingerprint of what the run depends on (the resolved params, the
input sizes, the scale plan): bytes that belong to another run, to an older format or
that do not parse are ignored with a log line and the run starts over; they never fail
the job.

When to save is decided by :class:`Checkpointer`: at every scale boundary (the engine
asks) and, inside a scale, every ``seconds`` (the worker's interval) or every ``steps``
optimiser steps (a deterministic trigger that tests use instead of a clock).  The
fine-tune engine saves after every epoch and only asks it to write and count.
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
STYLE_KIND = "style_transfer"  # style checkpoints predate the "kind" field: its default
TRAINING_KIND = "fine_tune"


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


@dataclass
class TrainingCheckpoint:
    """A fine-tune run after ``epoch`` network epochs (full / gradual) and ``step``
    optimiser steps.

    ``best_state`` is None when the best epoch so far is this one (its weights are
    ``model``), which spares a second copy of the network in most checkpoints.
    ``generator`` is the state of the run's ``torch.Generator`` (data order and
    augmentation), ``rng`` the global one.
    """

    fingerprint: str
    epoch: int
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    best_score: tuple[float, float]
    best_epoch: int
    best_state: dict[str, torch.Tensor] | None
    stale: int
    history: list[dict[str, Any]]
    rng: torch.Tensor
    generator: torch.Tensor

    def to_bytes(self) -> bytes:
        """The checkpoint as ``torch.save`` bytes (tensors moved to the CPU)."""
        payload = {
            "version": FORMAT_VERSION,
            "kind": TRAINING_KIND,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "step": self.step,
            "model": _cpu(self.model),
            "optimizer": _cpu(self.optimizer),
            "best_score": list(self.best_score),
            "best_epoch": self.best_epoch,
            "best_state": _cpu(self.best_state),
            "stale": self.stale,
            "history": self.history,
            "rng": _cpu(self.rng),
            "generator": _cpu(self.generator),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()


def _payload(data: bytes | None, expected: str, kind: str) -> dict[str, Any] | None:
    """The dict in ``data`` when it is a ``kind`` checkpoint of this run (``expected``
    fingerprint); None, with a log line saying why, otherwise."""
    if not data:
        return None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated bytes must never fail the job
        log.warning(
            "ignoring an unreadable checkpoint (%s: %s); starting over", type(exc).__name__, exc
        )
        return None
    if (
        not isinstance(payload, dict)
        or payload.get("version") != FORMAT_VERSION
        or payload.get("kind", STYLE_KIND) != kind
    ):
        log.warning("ignoring a checkpoint of another format; starting over")
        return None
    if payload.get("fingerprint") != expected:
        log.warning("ignoring a checkpoint of another run (params or inputs differ); starting over")
        return None
    return payload


def load(data: bytes | None, expected: str) -> Checkpoint | None:
    """The style checkpoint in ``data`` when it is this run's (``expected`` fingerprint);
    None, with a log line saying why, when it is absent, corrupt, of another format or
    of another run."""
    payload = _payload(data, expected, STYLE_KIND)
    if payload is None:
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


def load_training(data: bytes | None, expected: str) -> TrainingCheckpoint | None:
    """The fine-tune checkpoint in ``data`` when it is this run's; None (logged) when it
    is absent, corrupt, of another format or of another run."""
    payload = _payload(data, expected, TRAINING_KIND)
    if payload is None:
        return None
    try:
        score = payload["best_score"]
        checkpoint = TrainingCheckpoint(
            fingerprint=payload["fingerprint"],
            epoch=int(payload["epoch"]),
            step=int(payload["step"]),
            model=dict(payload["model"]),
            optimizer=dict(payload["optimizer"]),
            best_score=(float(score[0]), float(score[1])),
            best_epoch=int(payload["best_epoch"]),
            best_state=None if payload["best_state"] is None else dict(payload["best_state"]),
            stale=int(payload["stale"]),
            history=list(payload["history"]),
            rng=payload["rng"],
            generator=payload["generator"],
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.warning("ignoring an incomplete checkpoint (%s); starting over", exc)
        return None
    if not all(isinstance(t, torch.Tensor) for t in (checkpoint.rng, checkpoint.generator)):
        log.warning("ignoring a checkpoint without its RNG states; starting over")
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

    def save(self, checkpoint: Checkpoint | TrainingCheckpoint) -> None:
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


class EpochCheckpoints:
    """A fine-tune run's checkpointing: the checkpoint it continues from (``resume``, or
    None: from the start) and the writer of one checkpoint per network epoch (None: the
    caller wants none).  ``best`` is the engine's best-epoch record (score, epoch, state,
    stale, history), duck-typed so this module stays free of the engine's types."""

    def __init__(self, resume: TrainingCheckpoint | None, writer: Checkpointer | None) -> None:
        self.resume = resume
        self.writer = writer

    @classmethod
    def start(
        cls,
        key: str,
        data: bytes | None,
        sink: Callable[[bytes], None] | None,
        epochs: int,
        seconds: float = 0.0,
    ) -> EpochCheckpoints:
        """Checkpointing of a run with fingerprint ``key`` and ``epochs`` network epochs;
        ``data`` is used only when it is this run's and within those epochs.  An epoch
        ends with a checkpoint once ``seconds`` have passed since the last one (0: every
        epoch), so short epochs on a fast device do not each pay for one."""
        resume = load_training(data, key)
        if resume is not None and not 0 < resume.epoch <= epochs:
            log.warning(
                "ignoring a checkpoint of epoch %d of %d; starting over", resume.epoch, epochs
            )
            resume = None
        writer = None if sink is None else Checkpointer(key, sink, seconds=seconds)
        return cls(resume, writer)

    def restore(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        best: Any,
        gen: torch.Generator,
    ) -> tuple[int, int]:
        """Put the checkpoint's state back; returns (epochs done, optimiser steps done)."""
        resume = self.resume
        assert resume is not None
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        best.score, best.epoch, best.stale = resume.best_score, resume.best_epoch, resume.stale
        best.history = [dict(entry) for entry in resume.history]
        best.state = resume.best_state
        if best.state is None:  # the last epoch was the best: its weights are the model's
            best.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.set_rng_state(resume.rng)
        gen.set_state(resume.generator)
        return resume.epoch, resume.step

    def save(
        self,
        epoch: int,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        best: Any,
        gen: torch.Generator,
    ) -> None:
        """Checkpoint the run after network epoch ``epoch`` when one is due (never
        without a writer)."""
        if self.writer is None or not self.writer.due(epoch):
            return
        current = best.state is not None and _same(best.state, model.state_dict())
        self.writer.save(
            TrainingCheckpoint(
                fingerprint=self.writer.fingerprint,
                epoch=epoch,
                step=step,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                best_score=best.score,
                best_epoch=best.epoch,
                best_state=None if current else best.state,
                stale=best.stale,
                history=best.history,
                rng=torch.get_rng_state(),
                generator=gen.get_state(),
            )
        )

    def metrics(self) -> dict[str, Any]:
        """What ``metrics.json`` says: checkpoints written, their bytes, and the epoch
        the run continued after (None: it started from the beginning)."""
        resumed = None if self.resume is None else {"epoch": self.resume.epoch}
        return {
            "count": 0 if self.writer is None else self.writer.count,
            "bytes": 0 if self.writer is None else self.writer.bytes,
            "resumed_from": resumed,
        }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold equal tensors under the same names."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].device)) for k in a)
