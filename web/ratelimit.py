"""Per-owner submit rate limit: a fixed one-minute window counted in Redis.

Redis is shared by every web process, so the limit holds across gunicorn workers and
hosts. When Redis is down the limit is skipped: submits still land in the outbox.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from shared.errors import InputError
from shared.settings import Settings

log = logging.getLogger(__name__)
_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _client(url: str) -> redis.Redis:
    """One client per URL and process; the lock keeps two first submits from making two."""
    with _clients_lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        return _clients[url]


def check_submit_rate(owner: str, settings: Settings) -> None:
    now = time.time()
    window = int(now // 60)
    key = f"atelier:rate:{owner}:{window}"
    try:
        pipe = _client(settings.broker_url).pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count = pipe.execute()[0]
    except redis.RedisError:
        log.warning("rate limit skipped: Redis unavailable")
        return
    if count > settings.submit_rate_per_minute:
        raise InputError(
            f"too many submits: the limit is {settings.submit_rate_per_minute} per minute",
            status=429,
            code="rate_limited",
            retry_after=max(1, int(60 - now % 60)),
        )
