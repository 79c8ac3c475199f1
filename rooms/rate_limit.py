"""Rate limits: a token bucket per key behind a small interface.

In-process, or in Redis (rooms/redis_state.py, the same interface) so that
every node shares the buckets. :class:`RateLimits` names the limits a client
meets everywhere (HTTP requests per user and per address, socket events,
costly actions) and counts refusals in ``airwave_rate_limited_total``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter

log = logging.getLogger("airwave.rate_limit")

RATE_LIMITED = Counter("airwave_rate_limited_total", "Requests and events refused by a rate limit", ["limit"])


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


@dataclass(frozen=True)
class Limit:
    name: str
    rate: float  # tokens a second; 0 = no limit

    @property
    def burst(self) -> float:
        return max(2 * self.rate, 10.0)

    @property
    def retry_after(self) -> int:
        """Whole seconds until one token is back."""
        return max(1, math.ceil(1 / self.rate)) if self.rate else 0


class RateLimits:
    """Named limits, one bucket per (limit, key); ``make_bucket(rate, burst)``
    builds the in-process or the Redis bucket."""

    def __init__(self, limits: list[Limit], make_bucket: Callable[[float, float], RateLimiter]) -> None:
        self.limits = {limit.name: limit for limit in limits}
        self._buckets = {
            limit.name: make_bucket(limit.rate, limit.burst) for limit in limits if limit.rate > 0
        }
        for limit in limits:
            RATE_LIMITED.labels(limit.name)
        self._last_warning = -math.inf

    async def allow(self, name: str, key: str) -> bool:
        """Fails open: when the shared buckets cannot be reached (Redis restarting),
        requests go through rather than every request failing."""
        bucket = self._buckets.get(name)
        if bucket is None:
            return True
        try:
            allowed = await bucket.allow(f"{name}:{key}")
        except Exception as exc:  # noqa: BLE001 - redis errors of any kind
            now = time.monotonic()
            if now - self._last_warning > 10:
                self._last_warning = now
                log.warning("rate limits not checked: %s", exc)
            return True
        if not allowed:
            RATE_LIMITED.labels(name).inc()
        return allowed

    def retry_after(self, name: str) -> int:
        return self.limits[name].retry_after
