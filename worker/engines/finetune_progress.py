"""Fine-tuning progress counted in work done: decoded images and batches through a network.

Each part of a run (decoding, feature extraction, head training, network training) is
planned from the counts its own loop iterates over, using :func:`batch_count` (what
``datasets.batches`` and ``randperm().split`` yield), and planned again once the decoded
counts are known.  A part that stops early (early stopping) drops its unspent units, so
``step`` never exceeds ``total`` and the last report has ``step == total``, without a
hand-kept formula that every ``advance`` call must match.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

PARTS = ("decode", "features", "head", "network")


@dataclass(frozen=True)
class FinetuneProgress:
    """What the callback gets: ``step``/``total`` are work units across all stages."""

    stage: str
    step: int
    total: int
    epoch: int
    epochs: int
    loss: float | None
    val_accuracy: float | None
    best_accuracy: float | None
    elapsed: float


def batch_count(items: int, batch_size: int) -> int:
    """How many batches of ``batch_size`` cover ``items`` (the last one may be short)."""
    return len(range(0, items, batch_size))


class Tracker:
    """Planned and done units per part, elapsed time and the callback, in one place."""

    def __init__(self, callback: Callable[[FinetuneProgress], None] | None, epochs: int) -> None:
        self.callback = callback
        self.epochs = epochs
        self.planned = dict.fromkeys(PARTS, 0)
        self.done = dict.fromkeys(PARTS, 0)
        self.started = time.monotonic()
        self.best: float | None = None
        self.last: FinetuneProgress | None = None

    @property
    def step(self) -> int:
        return sum(self.done.values())

    @property
    def total(self) -> int:
        """Work done plus work planned and not yet done (never below ``step``)."""
        return sum(max(self.planned[part], self.done[part]) for part in PARTS)

    def plan(self, **units: int) -> None:
        """Set the units of the named parts (again once the decoded counts are known)."""
        unknown = set(units) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown progress part(s): {', '.join(sorted(unknown))}")
        self.planned.update(units)

    def advance(
        self,
        part: str,
        stage: str,
        epoch: int = 0,
        loss: float | None = None,
        val_accuracy: float | None = None,
        units: int = 1,
    ) -> None:
        """Count ``units`` of ``part`` as done and report (``units=0``: report only)."""
        self.done[part] += units
        self._report(
            FinetuneProgress(
                stage,
                self.step,
                self.total,
                epoch,
                self.epochs,
                loss,
                val_accuracy,
                self.best,
                time.monotonic() - self.started,
            )
        )

    def finish(self, part: str) -> None:
        """``part`` is over (perhaps early): its unspent units leave the total."""
        self.planned[part] = self.done[part]

    def skip(self, part: str, units: int | None = None) -> None:
        """Count ``units`` of ``part`` (None: every planned one) as done, without a report:
        the work a resumed run took over from its checkpoint instead of doing it again."""
        self.done[part] += self.planned[part] - self.done[part] if units is None else units

    def end(self) -> None:
        """Every part is over; the last report says ``step == total``."""
        for part in PARTS:
            self.finish(part)
        last = self.last
        if last is not None and (last.step, last.total) != (self.step, self.total):
            elapsed = time.monotonic() - self.started
            self._report(replace(last, step=self.step, total=self.total, elapsed=elapsed))

    def _report(self, progress: FinetuneProgress) -> None:
        self.last = progress
        if self.callback is not None:
            self.callback(progress)
