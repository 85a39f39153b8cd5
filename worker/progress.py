"""Turns the engine's per-step callback into throttled row writes, previews and cancel checks.

Every write here is fenced (see shared.states.Fence): once the job was requeued and
claimed by another worker, the next one raises Superseded instead of writing. Files go
under the attempt's own prefix, so a superseded attempt overwrites nothing. The same
callback also ends a job when the worker's shutdown drain runs out (Drained).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from shared import events, states
from shared.db import session_scope
from shared.jobs import StoredFile, add_file, attempt_key, touch_running, write_progress
from shared.settings import Settings
from shared.states import Fence, Superseded
from shared.storage import Storage
from shared.webhooks import PROGRESS_INTERVAL as WEBHOOK_INTERVAL
from worker import webhooks
from worker.engines.errors import Canceled

log = logging.getLogger(__name__)
PREVIEW_NAME = "preview.jpg"
PREVIEW_MAX_SIDE = 512
THUMBNAIL_NAME = "thumbnail.jpg"
THUMBNAIL_MAX_SIDE = 256
HISTORY_LIMIT = 500
# seconds a job told that the drain ran out has to reach its next progress step and hand
# itself back, before the worker's main process stops it at once (worker.celery_app)
HANDBACK_GRACE = 15.0

_drain = threading.Event()


class Drained(Exception):  # noqa: N818 - a state, like Canceled, not an error
    """Raised by a progress callback when the worker's shutdown drain ran out: the job is
    handed back to the queue (not counted as an attempt) instead of finishing here."""


def request_drain(*_args: object) -> None:
    """Ask the running job to stop at its next progress callback (a signal handler: the
    worker's main process sends SIGUSR2 when ATELIER_DRAIN_SECONDS have passed)."""
    _drain.set()


def drain_requested() -> bool:
    return _drain.is_set()


def store_output(
    storage: Storage, fence: Fence, name: str, data: bytes, content_type: str, role: str = "result"
) -> StoredFile:
    """Write one output under the attempt's prefix and describe it for its row (see
    ``record_outputs``); nothing outside this attempt's prefix is touched."""
    size = storage.put_bytes(attempt_key(fence.job_id, fence.attempt, name), data)
    return StoredFile(role, name, content_type, size)


def record_outputs(settings: Settings, fence: Fence, outputs: list[StoredFile]) -> None:
    """The file rows of outputs already written, in one fenced transaction.

    Rows of the same names from an earlier attempt are replaced; a superseded attempt
    gets Superseded and records nothing.
    """
    with session_scope(settings.database_url) as session:
        touch_running(session, fence)
        for stored in outputs:
            add_file(session, fence.job_id, stored, fence.attempt)


def _save_jpeg(
    storage: Storage, fence: Fence, image: Image.Image, name: str, role: str, side: int
) -> StoredFile:
    small = image.convert("RGB")
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=85)
    return store_output(storage, fence, name, buffer.getvalue(), "image/jpeg", role)


def save_preview(storage: Storage, fence: Fence, image: Image.Image) -> StoredFile:
    """A small JPEG of the current image, overwritten in place."""
    return _save_jpeg(storage, fence, image, PREVIEW_NAME, "preview", PREVIEW_MAX_SIDE)


def save_thumbnail(storage: Storage, fence: Fence, image: Image.Image) -> StoredFile:
    """The gallery's picture of a finished job: small enough for a page of dozens."""
    return _save_jpeg(storage, fence, image, THUMBNAIL_NAME, "thumbnail", THUMBNAIL_MAX_SIDE)


class ProgressReporter:
    """Callable given to an engine: writes at most every ``progress_interval`` seconds.

    Each write is also the heartbeat, the cancel check and the fencing check, so a
    canceled or superseded job stops within one interval of its next step; a drain that
    ran out stops it at the next step. A preview is saved at most every
    ``preview_interval``.
    """

    def __init__(
        self,
        fence: Fence,
        settings: Settings,
        storage: Storage,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fence = fence
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self.started = clock()
        self.last_write = float("-inf")
        self.last_preview = clock()
        self.history: list[dict[str, Any]] = []
        self.last_webhook: dict[str, float] = {}
        self.unwanted: set[str] = set()  # webhook events this job did not ask for

    def report(
        self,
        *,
        current: int,
        total: int,
        stage: str | None,
        loss: float | Callable[[], float] | None,
        image: Callable[[], Image.Image] | None = None,
        detail: dict[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        """Write progress if the interval passed (or ``force``); raise Canceled if asked to,
        Superseded when the job is no longer this attempt's, Drained when the worker's
        shutdown drain ran out.

        ``detail`` holds kind-specific numbers (epoch, accuracy…); its numeric values go
        into the history series with the step and loss, for the job page's curves.
        """
        if drain_requested():
            raise Drained(f"job {self.fence.job_id}: the worker is shutting down")
        now = self.clock()
        if not force and now - self.last_write < self.settings.progress_interval:
            return
        self.last_write = now
        if callable(loss):  # a GPU loss is read only for the reports that are written
            loss = loss()
        values: dict[str, Any] = {
            "progress_current": current,
            "progress_total": total,
            "progress_stage": stage,
            "progress_loss": loss,
            "eta_seconds": self._eta(now, current, total),
            "progress_detail": detail,
            "progress_history": self._record(now, current, loss, detail),
        }
        preview = None
        if image is not None and now - self.last_preview >= self.settings.preview_interval:
            self.last_preview = now
            preview = save_preview(self.storage, self.fence, image())
            values["preview_step"] = current
        with session_scope(self.settings.database_url) as session:
            cancel = write_progress(session, self.fence, values)  # Superseded: nothing kept
            if preview is not None:
                add_file(session, self.fence.job_id, preview, self.fence.attempt)
        self._publish(values, preview)
        self._webhooks(now, preview is not None)
        if cancel:
            raise Canceled("cancel requested")

    def _publish(self, values: dict[str, Any], preview: StoredFile | None) -> None:
        """Tell the open event streams (shared/events.py) what was just committed: the
        progress as the API's job object shows it, with the newest history point."""
        current, total = values["progress_current"], values["progress_total"] or 0
        progress = {
            "current": current,
            "total": total,
            "percent": round(100.0 * current / total, 1) if total else 0.0,
            "stage": values["progress_stage"],
            "eta_seconds": values["eta_seconds"],
            "loss": values["progress_loss"],
            "detail": values["progress_detail"],
            "point": self.history[-1] if self.history else None,
            "points": len(self.history),
        }
        events.notify(self.settings, self.fence.job_id, events.PROGRESS, progress)
        if preview is not None:
            data = {"name": preview.name, "step": current}
            events.notify(self.settings, self.fence.job_id, events.PREVIEW, data)

    def _webhooks(self, now: float, new_preview: bool) -> None:
        """The opt-in ``progress`` and ``output`` (a new preview) webhooks, each at most
        every ``shared.webhooks.PROGRESS_INTERVAL`` s; once the job turns out not to want one,
        its row is not read again for it."""
        for event, due in (("progress", True), ("output", new_preview)):
            last = self.last_webhook.get(event, float("-inf"))
            if not due or event in self.unwanted or now - last < WEBHOOK_INTERVAL:
                continue
            self.last_webhook[event] = now
            if webhooks.notify(self.settings, self.fence.job_id, event) is None:
                self.unwanted.add(event)

    def _record(
        self, now: float, current: int, loss: float | None, detail: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        point: dict[str, Any] = {"t": round(now - self.started, 2), "step": current, "loss": loss}
        for key, value in (detail or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                point[key] = value
        self.history.append(point)
        if len(self.history) > HISTORY_LIMIT:  # keep the shape, halve the resolution
            self.history = self.history[::2]
        return list(self.history)

    def _eta(self, now: float, current: int, total: int) -> float | None:
        if current <= 0 or total <= 0:
            return None
        elapsed = now - self.started
        return round(elapsed / current * (total - current), 1)


class Heartbeat:
    """Touches the job's heartbeat from a background thread while the job runs.

    Progress writes also heartbeat, but a long phase without steps (loading weights,
    computing style targets at a large size) must not look like a dead worker. If the
    process dies, the thread dies with it and the reaper takes over. A beat refused by
    the fence ends the thread: the job's next write will stop the run.
    """

    def __init__(self, settings: Settings, fence: Fence) -> None:
        self.settings = settings
        self.fence = fence
        self.interval = max(0.5, settings.heartbeat_timeout / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{fence.job_id[:8]}", daemon=True
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with session_scope(self.settings.database_url) as session:
                    touch_running(session, self.fence)
            except Superseded:
                log.warning(
                    "job %s attempt %d: heartbeat refused, the job moved on",
                    self.fence.job_id,
                    self.fence.attempt,
                )
                return
            except Exception:  # a missed beat is retried; the reaper's timeout has slack
                log.warning("heartbeat of %s failed", self.fence.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def mark_processing(settings: Settings, fence: Fence) -> None:
    """starting → processing once inputs are loaded, for the fence's attempt only; sends
    the ``start`` webhook. Superseded when the job is no longer this attempt's."""
    with session_scope(settings.database_url) as session:
        moved = states.transition(
            session, fence.job_id, states.PROCESSING, expect=states.STARTING, fence=fence
        )
    if not moved:
        raise Superseded(fence)
    events.notify(settings, fence.job_id, events.STATUS)
    webhooks.notify(settings, fence.job_id, "start")
