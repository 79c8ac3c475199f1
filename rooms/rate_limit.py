"""Rate limits: a token bucket per key behind a small interface.

In-process now; a Redis implementation (same interface) shares the buckets
across nodes later.
"""

from __future__ import annotations

import time
from typing import Protocol


class RateLimiter(Protocol):
    async def allow(self, key: str) -> bool:
        """Take one token for ``key``; False when the bucket is empty."""
        ...


class InProcessTokenBucket:
    """``rate`` tokens a second, up to ``burst``; idle buckets are forgotten."""

    def __init__(self, rate: float, burst: float | None = None, *, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._last_prune = clock()

    async def allow(self, key: str) -> bool:
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        """Drop buckets that have refilled completely: they equal a fresh one."""
        full_after = self.burst / self.rate
        if now - self._last_prune < max(full_after, 1.0) or len(self._buckets) < 1024:
            return
        self._last_prune = now
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[key]
