"""``GET /api/v1/jobs/<id>/events``: a job's status, progress and previews as a
``text/event-stream``, and the wait behind ``Prefer: wait=N`` on submit.

Fan-out: each web process holds one Redis pub/sub connection and one thread
(:class:`Hub`) whatever the number of open streams; the thread hands each message
(shared/events.py) to the bounded queues of the streams of that job, so a stream costs
a blocked thread of the server and a queue, never a Redis connection.

The job row is the truth: a stream sends the row's state first (on connect and on every
resume), reads it again after any message that may have been dropped (a full queue, the
pub/sub connection lost and back) and every :data:`RECHECK_SECONDS` anyway (every
:data:`RECHECK_OFFLINE_SECONDS` while Redis is unreachable, when streams degrade into
polling the row), so a lost message is late, never wrong. Transitions no process
publishes (the dispatcher's requeues) arrive by that re-read.

Bounds: a stream lasts at most :data:`STREAM_MAX_SECONDS` (then it ends and the
client's EventSource reconnects with ``Last-Event-ID``) and a process serves at most
``ATELIER_MAX_STREAMS`` streams and submit waits at once (503 ``busy`` beyond), since under
gunicorn's gthread worker each holds one of the process's threads for its whole life.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, request

from shared import events
from shared.db import get_engine
from shared.errors import InputError
from shared.jobs import JobRead, read_job
from shared.settings import Settings
from shared.states import TERMINAL
from shared.workers import redis_client
from web import db
from web.auth import owner_filter
from web.serializers import read_to_dict

log = logging.getLogger(__name__)
bp = Blueprint("events", __name__, url_prefix="/api/v1")

STREAM_MAX_SECONDS = 300.0
RECHECK_SECONDS = 15.0  # also the keep-alive comment's period, well under proxies' 60 s
RECHECK_OFFLINE_SECONDS = 2.0
PROGRESS_MIN_GAP = 0.5  # progress events at most twice a second per stream
RETRY_MS = 2000  # what EventSource waits before reconnecting after a stream ends
QUEUE_SIZE = 64
MAX_LAST_EVENT_ID = 20  # characters: our ids are decimal event numbers


class Subscription:
    """One stream's (or one wait's) bounded queue of a job's events.

    When the queue is full the hub drops the message and marks the subscription stale;
    the stream then reads the row again instead of replaying what it missed.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.stale = False
        self.closed = False
        self._queue: queue.Queue[events.Event | None] = queue.Queue(maxsize=QUEUE_SIZE)

    def offer(self, event: events.Event | None) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.stale = True

    def close(self) -> None:
        """End the stream at its next wake (the process is stopping)."""
        self.closed = True
        self.offer(None)

    def mark_stale(self) -> None:
        """A message may have been lost: wake the stream so it reads the row."""
        self.stale = True
        self.offer(None)

    def get(self, timeout: float) -> events.Event | None:
        try:
            return self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class Hub:
    """The process's one pub/sub connection and the thread that fans its messages out.

    The thread starts with the first subscription (after gunicorn forked the process),
    reconnects with a growing pause while Redis is away, and on every (re)subscribe marks
    every subscription stale, since messages may have passed while it was away.
    """

    def __init__(self, redis_url: str, max_streams: int) -> None:
        self.redis_url = redis_url
        self.max_streams = max_streams
        self.connected = threading.Event()
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def subscribe(self, job_id: str) -> Subscription | None:
        """A new subscription, or None when the process serves ``max_streams`` already."""
        subscription = Subscription(job_id)
        with self._lock:
            if self.count_locked() >= self.max_streams:
                return None
            self._subscriptions.setdefault(job_id, set()).add(subscription)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="event-hub", daemon=True)
                self._thread.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            group = self._subscriptions.get(subscription.job_id, set())
            group.discard(subscription)
            if not group:
                self._subscriptions.pop(subscription.job_id, None)

    def count_locked(self) -> int:
        return sum(len(group) for group in self._subscriptions.values())

    def count(self) -> int:
        with self._lock:
            return self.count_locked()

    def stop(self) -> None:
        """Stop the thread and end every stream and wait of this process."""
        self._stop.set()
        with self._lock:
            everyone = [s for group in self._subscriptions.values() for s in group]
        for subscription in everyone:
            subscription.close()

    def _dispatch(self, event: events.Event) -> None:
        with self._lock:
            group = list(self._subscriptions.get(event.job_id, ()))
        for subscription in group:
            subscription.offer(event)

    def _mark_all_stale(self) -> None:
        with self._lock:
            everyone = [s for group in self._subscriptions.values() for s in group]
        for subscription in everyone:
            subscription.mark_stale()

    def _run(self) -> None:
        pause = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                pause = 0.5
            except Exception as exc:  # any failure: wait, then subscribe again
                log.warning("event hub: Redis pub/sub lost (%s); streams read the rows", exc)
            self.connected.clear()
            self._mark_all_stale()
            self._stop.wait(pause)
            pause = min(pause * 2, 10.0)

    def _listen(self) -> None:
        client = redis.Redis.from_url(
            self.redis_url, socket_connect_timeout=2, socket_keepalive=True
        )
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(events.channel(client))
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=RECHECK_SECONDS)
                if message is None:
                    pubsub.ping()  # a dead connection fails here rather than never
                elif message["type"] == "subscribe":
                    self.connected.set()
                    self._mark_all_stale()
                elif message["type"] == "message":
                    event = events.decode(message["data"])
                    if event is not None:
                        self._dispatch(event)
        finally:
            pubsub.close()
            client.close()


def hub() -> Hub:
    return current_app.extensions["atelier_events"]


def init_app(app: Flask) -> None:
    settings: Settings = app.config["ATELIER"]
    # Settings.max_streams: each stream holds one of gunicorn's ATELIER_WEB_THREADS
    limit = app.config.get("ATELIER_MAX_STREAMS", settings.max_streams)
    app.extensions["atelier_events"] = Hub(settings.redis_url or "", limit)
    app.register_blueprint(bp)


# --- reading the row -----------------------------------------------------------------------


def read_state(settings: Settings, job_id: str, owner: str | None) -> JobRead | None:
    """The job as ``GET /api/v1/jobs/<id>`` reads it, on a pooled connection."""
    with get_engine(settings.database_url).connect() as connection:
        return read_job(connection, job_id, owner)


def fingerprint(read: JobRead) -> tuple[Any, ...]:
    """What makes a ``status`` event worth sending again."""
    job = read.job
    return (
        job.status,
        job.attempts,
        job.cancel_requested_at,
        job.error_code,
        read.queue_position,
        len(read.files),
    )


def current_sequence(settings: Settings, job_id: str) -> int:
    """The job's last event number; 0 when it has none or Redis cannot say."""
    if not settings.redis_url:
        return 0
    try:
        return events.current_sequence(redis_client(settings.redis_url), job_id)
    except redis.RedisError:
        return 0


# --- the stream ----------------------------------------------------------------------------


def frame(kind: str, data: Any, event_id: int | None = None) -> str:
    """One server-sent event; JSON never holds a raw newline, so one ``data:`` line."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class Stream:
    """One client's stream: the row first, then pushed events, until the job ends."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        subscription: Subscription,
        first: JobRead,
        owner: str | None,
        resume_from: int | None,
    ) -> None:
        self.settings = settings
        self.app = current_app._get_current_object()
        # the request's own context (and ORM session) ends when the view returns, so a
        # stream holds no pooled connection between its reads; links are built in copies
        self.environ = {k: v for k, v in request.environ.items() if k != "wsgi.input"}
        self.hub = hub
        self.subscription = subscription
        self.first = first
        self.owner = owner
        self.resume_from = resume_from
        self.job_id = first.job.id
        self.sent: tuple[Any, ...] | None = None
        # a resume assumed the client saw the row it read: the next status event is sent
        # whatever the row says, in case the row was newer than what the client saw
        self.assumed = False
        self.last_id = 0
        self.pending: events.Event | None = None
        self.last_progress = float("-inf")
        self.last_write = time.monotonic()
        self.ended: str | None = None  # the status (or "deleted") that ends the stream

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._run()
        finally:
            self.hub.unsubscribe(self.subscription)

    def _run(self) -> Iterator[str]:
        deadline = time.monotonic() + STREAM_MAX_SECONDS
        yield f"retry: {RETRY_MS}\n\n"
        self.last_id = current_sequence(self.settings, self.job_id)
        read = read_state(self.settings, self.job_id, self.owner) or self.first
        if self.resume_from is not None and self.resume_from == self.last_id > 0:
            if current_sequence(self.settings, self.job_id) == self.last_id:
                # the client saw the state of event N: most likely this row, so nothing is
                # resent now. A writer may have committed a newer row and not yet
                # published its event (commit, then publish): that event comes next, and
                # the first status event after a resume is sent even when it finds this row
                self.sent, self.assumed = fingerprint(read), True
            # else an event came between the two reads, so the row may already be newer
            # than what the client saw: leave it unsent; that event (it is on its way to
            # this subscription) or the next re-read sends it with its own, newer id
        else:
            yield self._status(read, self.last_id)
        if read.job.status in TERMINAL:
            yield frame(events.END, {"status": read.job.status})
            return
        next_check = time.monotonic() + self._recheck_period()
        while (now := time.monotonic()) < deadline and not self.subscription.closed:
            wake = min(deadline, next_check)
            if self.pending is not None:
                wake = min(wake, self.last_progress + PROGRESS_MIN_GAP)
            event = self.subscription.get(wake - now)
            now = time.monotonic()
            if self.pending is not None and now >= self.last_progress + PROGRESS_MIN_GAP:
                yield self._progress()
            if event is not None and event.seq > self.last_id:
                chunk = self._handle(event)
                if chunk:
                    yield chunk
            if self.subscription.stale or now >= next_check:
                next_check = now + self._recheck_period()
                chunk = self._recheck()
                if chunk:
                    yield chunk
                else:  # also how a server thread learns that its client left
                    yield self._wrote(": keep-alive\n\n")
            if self.ended:
                yield frame(events.END, {"status": self.ended})
                return
        yield ": this stream reached its lifetime; reconnect with Last-Event-ID\n\n"

    def _recheck_period(self) -> float:
        return RECHECK_SECONDS if self.hub.connected.is_set() else RECHECK_OFFLINE_SECONDS

    def _wrote(self, chunk: str) -> str:
        self.last_write = time.monotonic()
        return chunk

    def _status(self, read: JobRead, event_id: int | None) -> str:
        self.sent, self.assumed = fingerprint(read), False
        if read.job.status in TERMINAL:
            self.ended = read.job.status
            self.pending = None  # no progress after the end
        if event_id:
            self.last_id = max(self.last_id, event_id)
        with self.app.request_context(self.environ):  # url_for, on the streaming thread
            body = read_to_dict(read)
        return self._wrote(frame(events.STATUS, body, event_id))

    def _handle(self, event: events.Event) -> str | None:
        if event.type == events.PROGRESS:
            self.pending = event  # the newest wins; sent at most every PROGRESS_MIN_GAP
            return None
        if event.type == events.PREVIEW:
            self.last_id = event.seq
            name = event.data.get("name", "preview.jpg")
            data = {"url": f"/api/v1/jobs/{self.job_id}/files/{name}", **event.data}
            return self._wrote(frame(events.PREVIEW, data, event.seq))
        read = read_state(self.settings, self.job_id, self.owner)
        if read is None:
            self.ended = "deleted"
            return None
        if fingerprint(read) == self.sent and not self.assumed:  # sent: only the id moves
            self.last_id = event.seq  # (an event without data sets EventSource's lastEventId)
            return self._wrote(f"id: {event.seq}\n\n")
        return self._status(read, event.seq)

    def _progress(self) -> str:
        event, self.pending = self.pending, None
        self.last_progress = time.monotonic()
        # held back by the throttle while a newer event went out: it keeps no id of its
        # own, so ids stay increasing (a resume sends the row, which holds this anyway)
        event_id = event.seq if event.seq > self.last_id else None
        self.last_id = max(self.last_id, event.seq)
        return self._wrote(frame(events.PROGRESS, event.data, event_id))

    def _recheck(self) -> str | None:
        """Read the row; a status event when it changed unannounced (or a message was lost)."""
        if self.subscription.stale:
            self.subscription.stale = False
            self.subscription.drain()
        seq = current_sequence(self.settings, self.job_id)  # first: the row is as new
        read = read_state(self.settings, self.job_id, self.owner)
        if read is None:
            self.ended = "deleted"
            return None
        if fingerprint(read) == self.sent and read.job.status not in TERMINAL:
            return None
        return self._status(read, seq if seq > self.last_id else None)


def last_event_id() -> int | None:
    """The ``Last-Event-ID`` header of a reconnect, checked: a decimal event number."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_LAST_EVENT_ID or not raw.isascii() or not raw.isdigit():
        raise InputError(
            f"Last-Event-ID must be an event id this server sent (up to {MAX_LAST_EVENT_ID} "
            "digits)",
            field="Last-Event-ID",
        )
    return int(raw)


def busy() -> InputError:
    return InputError(
        "this web process serves as many event streams as it may; poll "
        "GET /api/v1/jobs/<id> instead, or retry later",
        status=503,
        code="busy",
        retry_after=5,
    )


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """The stream; 404 like ``GET /api/v1/jobs/<id>``, 204 when a reconnect finds the job
    ended and already seen (EventSource then stops reconnecting)."""
    resume_from = last_event_id()
    settings, owner = db.settings(), owner_filter()
    first = read_state(settings, job_id, owner)
    if first is None:
        raise InputError(f"job {job_id} not found", status=404, code="not_found")
    if (
        first.job.status in TERMINAL
        and resume_from is not None
        and resume_from == current_sequence(settings, job_id)
    ):
        return Response(status=204)
    subscription = hub().subscribe(first.job.id)
    if subscription is None:
        raise busy()
    stream = Stream(settings, hub(), subscription, first, owner, resume_from)
    response = Response(iter(stream), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


# --- Prefer: wait=N ------------------------------------------------------------------------


def wait_for_end(
    settings: Settings, job_id: str, owner: str | None, seconds: float
) -> JobRead | None:
    """The job once it ended or ``seconds`` passed, whichever comes first.

    Wakes on the job's status events and reads the row at least every
    :data:`RECHECK_OFFLINE_SECONDS`, so it works (later) without Redis too. Raises the
    503 ``busy`` error when the process has no room for another wait.
    """
    subscription = hub().subscribe(job_id) if seconds > 0 else None
    if subscription is None and seconds > 0:
        raise busy()
    deadline = time.monotonic() + seconds
    try:
        while True:
            read = read_state(settings, job_id, owner)
            left = deadline - time.monotonic()
            if read is None or read.job.status in TERMINAL or left <= 0 or subscription is None:
                return read
            subscription.get(min(left, RECHECK_OFFLINE_SECONDS))
    finally:
        if subscription is not None:
            hub().unsubscribe(subscription)
