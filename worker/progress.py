"""Turns the engine's per-step callback into throttled row writes, previews and cancel checks."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from shared import states
from shared.db import session_scope
from shared.jobs import StoredFile, add_file, touch_running, write_progress
from shared.settings import Settings
from shared.storage import Storage, job_key
from worker import webhooks
from worker.engines.errors import Canceled

log = logging.getLogger(__name__)
PREVIEW_NAME = "preview.jpg"
PREVIEW_MAX_SIDE = 512
THUMBNAIL_NAME = "thumbnail.jpg"
THUMBNAIL_MAX_SIDE = 256
HISTORY_LIMIT = 500


def store_output(
    storage: Storage, job_id: str, name: str, data: bytes, content_type: str, role: str = "result"
) -> StoredFile:
    """Write one job file and describe it for its row (see ``record_outputs``)."""
    size = storage.put_bytes(job_key(job_id, name), data)
    return StoredFile(role, name, content_type, size)


def record_outputs(settings: Settings, job_id: str, outputs: list[StoredFile]) -> None:
    """The file rows of outputs already written, in one transaction."""
    with session_scope(settings.database_url) as session:
        for stored in outputs:
            add_file(session, job_id, stored)


def _save_jpeg(
    storage: Storage, job_id: str, image: Image.Image, name: str, role: str, side: int
) -> StoredFile:
    small = image.convert("RGB")
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=85)
    return store_output(storage, job_id, name, buffer.getvalue(), "image/jpeg", role)


def save_preview(storage: Storage, job_id: str, image: Image.Image) -> StoredFile:
    """A small JPEG of the current image, overwritten in place."""
    return _save_jpeg(storage, job_id, image, PREVIEW_NAME, "preview", PREVIEW_MAX_SIDE)


def save_thumbnail(storage: Storage, job_id: str, image: Image.Image) -> StoredFile:
    """The gallery's picture of a finished job: small enough for a page of dozens."""
    return _save_jpeg(storage, job_id, image, THUMBNAIL_NAME, "thumbnail", THUMBNAIL_MAX_SIDE)


class ProgressReporter:
    """Callable given to an engine: writes at most every ``progress_interval`` seconds.

    Each write is also the heartbeat and the cancel check, so a canceled job stops within
    one interval of its next step. A preview is saved at most every ``preview_interval``.
    """

    def __init__(
        self,
        job_id: str,
        settings: Settings,
        storage: Storage,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self.started = clock()
        self.last_write = float("-inf")
        self.last_preview = clock()
        self.history: list[dict[str, Any]] = []

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
        """Write progress if the interval passed (or ``force``); raise Canceled if asked to.

        ``detail`` holds kind-specific numbers (epoch, accuracy…); its numeric values go
        into the history series with the step and loss, for the job page's curves.
        """
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
            preview = save_preview(self.storage, self.job_id, image())
            values["preview_step"] = current
        with session_scope(self.settings.database_url) as session:
            if preview is not None:
                add_file(session, self.job_id, preview)
            running, cancel = write_progress(session, self.job_id, values)
        if cancel or not running:
            raise Canceled("cancel requested" if cancel else "job is no longer running")

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
    process dies, the thread dies with it and the reaper takes over.
    """

    def __init__(self, settings: Settings, job_id: str) -> None:
        self.settings = settings
        self.job_id = job_id
        self.interval = max(0.5, settings.heartbeat_timeout / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with session_scope(self.settings.database_url) as session:
                    touch_running(session, self.job_id)
            except Exception:  # a missed beat is retried; the reaper's timeout has slack
                log.warning("heartbeat of %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def mark_processing(settings: Settings, job_id: str) -> None:
    """starting → processing once inputs are loaded; sends the ``start`` webhook."""
    with session_scope(settings.database_url) as session:
        moved = states.transition(session, job_id, states.PROCESSING, expect=states.STARTING)
    if moved:
        webhooks.notify(settings, job_id, "start")
