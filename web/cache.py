"""A small per-process cache of values that may be a few seconds old.

``/healthz`` and ``/metrics`` are public and cheap to ask for, while their answers cost
database and Redis work; reusing an answer for a few seconds bounds that work to once per
period per process, however often they are called.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
MAX_KEYS = 32


class TTLCache(Generic[T]):
    """Values by key, each recomputed at most once per ``seconds``; safe across threads.

    One lock: callers that find a value expired wait for the one that recomputes it, so
    gunicorn's threads never run the expensive work side by side. The age counts from the
    end of the computation, so computations are at least ``seconds`` apart.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[Hashable, tuple[float, T]] = {}

    def get(self, key: Hashable, seconds: float, compute: Callable[[], T]) -> T:
        """The cached value of ``key`` if younger than ``seconds``, else ``compute()``'s."""
        with self._lock:
            hit = self._values.get(key)
            if hit is not None and self._clock() - hit[0] < seconds:
                return hit[1]
            value = compute()
            if len(self._values) >= MAX_KEYS and key not in self._values:
                self._values.pop(next(iter(self._values)))  # the oldest key
            self._values[key] = (self._clock(), value)
            return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
