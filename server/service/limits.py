"""A per-device rate limit: a token bucket per device id, in this process's memory.

Each coordinator process limits the calls it serves; the bound is per process, which is what protects it.
Memory is bounded: the least recently used buckets are dropped beyond `max_keys`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from feddetox.errors import RateLimitedError


class RateLimiter:
    """`rate` calls a second on average, bursts of up to `burst`; `rate <= 0` means no limit."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.rate, self.burst, self.clock, self.max_keys = rate, max(1, burst), clock, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one token for `key` or raise RateLimitedError saying when to retry."""
        if self.rate <= 0:
            return
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimitedError(
                    f"device {key[:64]}: more than {self.rate:g} calls a second (bursts of {self.burst});"
                    f" retry after {wait:.2f} s"
                )
            self._buckets[key] = (tokens - 1.0, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
