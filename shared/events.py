"""Job events on Redis pub/sub: the channel, the per-job sequence and the publish helper.

Workers (and the web, for what it changes itself) publish a small message on one
channel after each write that a person watching a job would want to see at once: a
status change, a progress write, a new preview. Every web process holds one
subscription to that channel and fans each message out to its open streams
(web/events.py). Messages are hints, not the record: the job row stays the source of
truth, and a stream reads the row on connect, on resume and whenever it may have missed
a message, so an event lost on the way (Redis restarted, a slow client) never leaves a
client wrong.

Each message carries the job's next number from a Redis counter, incremented in the same
script that publishes, so the numbers of one job are increasing in the order Redis saw
the messages. They are the streams' event ids, which ``Last-Event-ID`` hands back on a
reconnect. A counter lost with a Redis restart starts again at 1; streams then send the
row again (see web/events.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from shared.settings import Settings
from shared.workers import redis_client

log = logging.getLogger(__name__)

STATUS, PROGRESS, PREVIEW, END = "status", "progress", "preview", "end"
TYPES = (STATUS, PROGRESS, PREVIEW, END)
CHANNEL_PREFIX = "atelier:events"
SEQUENCE_PREFIX = "atelier:events:seq:"
SEQUENCE_TTL_SECONDS = 7 * 24 * 3600  # a job nobody touched for a week keeps no counter
# after a failed publish, skip publishing this long: a job's progress write must not wait
# on a Redis that is down (the streams fall back to reading the row meanwhile)
BACKOFF_SECONDS = 5.0

# INCR the job's counter, refresh its expiry and publish "<job id> <seq> <type> <json>"
_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. seq .. ' ' .. ARGV[3])
return seq
"""


@dataclass(frozen=True)
class Event:
    """One message as a subscriber receives it."""

    job_id: str
    seq: int
    type: str
    data: dict[str, Any]


def channel(client: redis.Redis) -> str:
    """The channel of the client's database: pub/sub ignores database numbers, so two
    deployments (or test runs) sharing one Redis on different databases stay apart."""
    return f"{CHANNEL_PREFIX}:{client.connection_pool.connection_kwargs.get('db', 0)}"


def sequence_key(job_id: str) -> str:
    return f"{SEQUENCE_PREFIX}{job_id}"


def decode(raw: bytes | str) -> Event | None:
    """The event in a channel message, or None for anything this module did not write."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        job_id, seq, kind, body = text.split(" ", 3)
        data = json.loads(body)
        if kind not in TYPES or not isinstance(data, dict):
            return None
        return Event(job_id, int(seq), kind, data)
    except (ValueError, UnicodeDecodeError):
        return None


def current_sequence(client: redis.Redis, job_id: str) -> int:
    """The job's last event number (0 when it has none); raises redis.RedisError."""
    value = client.get(sequence_key(job_id))
    return int(value) if value else 0


class _Backoff:
    """Remembers a failed publish so the next ones within BACKOFF_SECONDS are skipped."""

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def open(self) -> bool:
        return time.monotonic() >= self._until

    def failed(self) -> None:
        with self._lock:
            self._until = time.monotonic() + BACKOFF_SECONDS


_backoff = _Backoff()


def publish(redis_url: str, job_id: str, kind: str, data: dict[str, Any] | None = None) -> int:
    """Publish one event of ``job_id``; returns its number, 0 when it was not sent.

    Best effort by design: a job never fails, or waits more than Redis's one-second
    socket timeout, because an event could not be published.
    """
    if kind not in TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    if not _backoff.open():
        return 0
    client = redis_client(redis_url)
    body = json.dumps(data or {}, separators=(",", ":"), default=str)
    try:
        seq = client.eval(
            _PUBLISH,
            1,
            sequence_key(job_id),
            channel(client),
            job_id,
            f"{kind} {body}",
            SEQUENCE_TTL_SECONDS,
        )
    except redis.RedisError:
        _backoff.failed()
        log.warning("could not publish the %s event of job %s", kind, job_id, exc_info=True)
        return 0
    return int(seq)


def notify(settings: Settings, job_id: str, kind: str, data: dict[str, Any] | None = None) -> int:
    """:func:`publish` on the settings' Redis; nothing (0) where there is none (a local
    run of an engine, a test without a broker)."""
    if not settings.redis_url:
        return 0
    return publish(settings.redis_url, job_id, kind, data)
