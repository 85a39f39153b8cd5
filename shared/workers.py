"""Live Celery workers, counted from heartbeats they publish in Redis.

A broadcast ``ping`` makes every worker answer and waits out a timeout, so asking it on
every ``/healthz`` let anyone load all workers. Instead each worker node's main process
sets ``atelier:worker:<hostname>`` every :data:`BEAT_SECONDS`, with a time to live of
:data:`KEY_TTL_SECONDS`: a node that stops cleanly deletes its key, and one that dies
(killed, machine gone) stops refreshing it and Redis drops it by itself. Counting is one
``SCAN`` over those keys. Redis's own clock decides expiry, so workers on other machines
need no synchronised clocks.

The key's value is the node's :class:`Offer`: which queues it consumes and which device
class it runs jobs on, so a dry run can say whether any live worker would take a job and
on what (web/dry_run.py). The node's main process never imports torch, so ``device`` is
what the node was told (``ATELIER_DEVICE``: ``atelier worker --gpus`` sets ``cuda``), and
``auto`` when the job decides (CUDA if the child process sees a GPU, else the CPU).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import redis

log = logging.getLogger(__name__)

KEY_PREFIX = "atelier:worker:"
BEAT_SECONDS = 2.0
# several missed beats before a node counts as gone: a busy machine may delay one or two
KEY_TTL_SECONDS = 10
SCAN_BATCH = 1000
# a broker database holds a few dozen keys; this bounds a count on a shared, crowded one
SCAN_MAX_CALLS = 100


@lru_cache(maxsize=8)
def redis_client(url: str) -> redis.Redis:
    """One client (and connection pool) per URL per process, failing fast when Redis is down."""
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def worker_key(hostname: str) -> str:
    return f"{KEY_PREFIX}{hostname}"


@dataclass(frozen=True)
class Offer:
    """What one live worker node serves: its queues and its device class."""

    queues: tuple[str, ...] = ()
    device: str = "auto"  # cpu, cuda, or auto (each job picks CUDA when it sees a GPU)

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": os.getpid(),
                "at": round(time.time()),
                "queues": list(self.queues),
                "device": self.device,
            }
        )

    @classmethod
    def from_value(cls, value: bytes | str | None) -> Offer | None:
        """The offer in a heartbeat's value; None for an unreadable one (a node of an older
        release wrote ``"<pid> <time>"``: it counts as live but offers nothing known)."""
        try:
            data = json.loads(value or b"")
            queues = tuple(str(q) for q in data["queues"])
            return cls(queues, str(data["device"]))
        except (ValueError, TypeError, KeyError):
            return None


def device_of(setting: str) -> str:
    """The device class a node announces for its ``ATELIER_DEVICE`` value."""
    name = setting.split(":", 1)[0].lower()
    return name if name in ("cpu", "cuda") else "auto"


def publish(client: redis.Redis, hostname: str, offer: Offer | None = None) -> None:
    """One heartbeat: (re)set this node's key, holding its offer, with its time to live."""
    client.set(worker_key(hostname), (offer or Offer()).to_json(), ex=KEY_TTL_SECONDS)


def count_live(client: redis.Redis) -> int:
    """How many worker nodes have a live heartbeat key."""
    return len(_live_keys(client))


def live_offers(client: redis.Redis) -> list[Offer | None]:
    """The offer of every live node (None where its value is unreadable); one SCAN and one
    MGET. A key that expires between the two is left out."""
    keys = sorted(_live_keys(client))
    values = client.mget(keys) if keys else []
    return [Offer.from_value(value) for value in values if value is not None]


def serving(offers: Iterable[Offer | None], queue: str) -> list[Offer]:
    """The offers that consume ``queue``."""
    return [offer for offer in offers if offer is not None and queue in offer.queues]


def _live_keys(client: redis.Redis) -> set[bytes]:
    found: set[bytes] = set()  # SCAN may return a key twice while the keyspace is rehashed
    cursor = 0
    for _ in range(SCAN_MAX_CALLS):
        cursor, keys = client.scan(cursor, match=f"{KEY_PREFIX}*", count=SCAN_BATCH)
        found.update(keys)
        if cursor == 0:
            break
    else:
        log.warning("stopped counting workers after %d SCAN calls", SCAN_MAX_CALLS)
    return found


class Beacon:
    """Publishes a node's heartbeat from a daemon thread until :meth:`stop`.

    It runs in the node's main process (the one that takes messages), not in the pool's
    children that run jobs, so a long job does not delay it.
    """

    def __init__(
        self,
        client: redis.Redis,
        hostname: str,
        interval: float = BEAT_SECONDS,
        offer: Offer | None = None,
    ):
        self.client = client
        self.hostname = hostname
        self.offer = offer or Offer()
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> Beacon:
        """Publish once now (so the node counts as soon as it is ready), then keep beating."""
        self._beat()
        self._thread.start()
        return self

    def _beat(self) -> None:
        try:
            publish(self.client, self.hostname, self.offer)
        except redis.RedisError as exc:  # Redis is down: the next beat tries again
            log.warning("worker heartbeat failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def stop(self) -> None:
        """Stop beating and remove the key, so a clean shutdown counts at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval + 2)
        try:
            self.client.delete(worker_key(self.hostname))
        except redis.RedisError as exc:
            log.warning("could not remove the worker heartbeat: %s", exc)
