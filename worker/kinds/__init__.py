"""The worker side of a job kind: what its runner is given, and the registry of runners.

A kind's runner is ``run(ctx: RunContext) -> dict``: it reads its inputs, calls
``ctx.mark_processing()`` once they are loaded, runs its engine with ``ctx.report`` as
the progress callback, stores its outputs with ``ctx.store_output`` and returns the
summary that goes into the job's metrics. Everything else (claim, heartbeat, the end
states, hand-back, webhooks) is worker/runner.py's, the same for every kind.

The built-in kinds' modules (worker/kinds/style_transfer.py, fine_tune.py, predict.py,
sweep.py) are imported when a job of that kind first runs, so the engines and torch
load inside a job, as they always have. A deployment's own kind calls :func:`register_runner` from a
module named in ATELIER_KIND_MODULES, next to its ``shared.kinds.register`` call.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from shared.jobs import StoredFile
from shared.kinds import KindSpec, get_kind
from shared.settings import Settings
from shared.states import Fence
from shared.storage import Storage, job_key
from worker import progress

if TYPE_CHECKING:  # the engines (and torch) load only inside a job
    from worker.engines.imaging import ImageLimits

log = logging.getLogger(__name__)

DEFAULT_HINT = "make the job smaller"


@dataclass
class RunContext:
    """One claimed attempt of one job, as its kind's runner sees it.

    ``inputs`` maps each file field (role) to the stored names of its uploads, in upload
    order. Outputs go under the attempt's own prefix and are collected in ``outputs``;
    the lifecycle records their rows in one fenced write once the runner returns, so a
    run that fails or is superseded half-way records none.
    """

    fence: Fence
    kind: str
    params: dict[str, Any]
    inputs: dict[str, list[str]]
    settings: Settings
    storage: Storage
    outputs: list[StoredFile] = field(default_factory=list)
    reporter: progress.ProgressReporter | None = field(default=None, repr=False)

    @property
    def job_id(self) -> str:
        return self.fence.job_id

    @property
    def spec(self) -> KindSpec:
        return get_kind(self.kind)

    def engine_params(self) -> dict[str, Any]:
        """The recorded params the engine takes (the spec's ``engine=True`` ones)."""
        return self.spec.engine_params(self.params)

    def read(self, name: str) -> bytes:
        """An input's bytes (the web stores those at ``jobs/<id>/<name>``)."""
        with self.storage.open(job_key(self.job_id, name)) as handle:
            return handle.read()

    def mark_processing(self) -> None:
        """starting → processing once the inputs are loaded (sends the ``start`` webhook);
        the progress clock, and so the ETA, starts here."""
        progress.mark_processing(self.settings, self.fence)
        self.reporter = progress.ProgressReporter(self.fence, self.settings, self.storage)

    def report(self, **values: Any) -> None:
        """:meth:`worker.progress.ProgressReporter.report`: a throttled progress write that
        also raises Canceled, Superseded or Drained when the job must stop."""
        if self.reporter is None:
            self.reporter = progress.ProgressReporter(self.fence, self.settings, self.storage)
        self.reporter.report(**values)

    def store_output(
        self, name: str, data: bytes, content_type: str, role: str = "result"
    ) -> StoredFile:
        """Write one output under the attempt's prefix; its row is recorded at the end."""
        stored = progress.store_output(self.storage, self.fence, name, data, content_type, role)
        return self._keep(stored)

    def save_preview(self, image: Image.Image) -> StoredFile:
        """The final preview (the reporter saves the ones on the way)."""
        return self._keep(progress.save_preview(self.storage, self.fence, image))

    def save_thumbnail(self, image: Image.Image) -> StoredFile:
        return self._keep(progress.save_thumbnail(self.storage, self.fence, image))

    def _keep(self, stored: StoredFile) -> StoredFile:
        self.outputs.append(stored)
        return stored


Run = Callable[[RunContext], dict[str, Any]]


@dataclass(frozen=True)
class KindRunner:
    """A kind's runner and what the lifecycle tells a person when the kind's job runs
    out of memory or time (what to make smaller). ``preload`` warms a fresh worker
    child (e.g. the default network), best effort."""

    run: Run
    out_of_memory_hint: str = DEFAULT_HINT
    timeout_hint: str = DEFAULT_HINT
    preload: Callable[[], None] | None = None


# kind -> its runner, or the module that defines it as ``RUNNER`` (imported on first use)
RUNNERS: dict[str, KindRunner | str] = {
    kind: f"worker.kinds.{kind}" for kind in ("style_transfer", "fine_tune", "predict", "sweep")
}


def register_runner(
    kind: str,
    run: Run,
    *,
    out_of_memory_hint: str = DEFAULT_HINT,
    timeout_hint: str = DEFAULT_HINT,
    preload: Callable[[], None] | None = None,
) -> KindRunner:
    """Add the runner of ``kind`` (again with the same function is a no-op); a kind
    that already has a different runner, a built-in one included, is refused."""
    runner = KindRunner(run, out_of_memory_hint, timeout_hint, preload)
    known = RUNNERS.get(kind)
    if known is not None and (isinstance(known, str) or known.run is not run):
        raise ValueError(f"job kind {kind!r} already has a runner")
    RUNNERS[kind] = runner
    return runner


def runner_for(kind: str) -> KindRunner | None:
    """The runner of ``kind``, importing a built-in kind's module the first time; None
    when this worker has none (the kind's module is not in ATELIER_KIND_MODULES)."""
    known = RUNNERS.get(kind)
    if isinstance(known, str):
        known = RUNNERS[kind] = importlib.import_module(known).RUNNER
    return known


def preload() -> None:
    """Run every known kind's preload; one that fails is logged, not fatal (the job
    loads what it needs and reports the error)."""
    for kind in list(RUNNERS):
        try:
            runner = runner_for(kind)
            if runner is not None and runner.preload is not None:
                runner.preload()
        except Exception:
            log.exception("preload of %s failed; its jobs load what they need", kind)


def image_limits(settings: Settings) -> ImageLimits:
    """The header bounds (ATELIER_MAX_PIXELS, ATELIER_MAX_ASPECT_RATIO) every decode checks."""
    from worker.engines.imaging import ImageLimits

    return ImageLimits(settings.max_pixels, settings.max_aspect_ratio)
