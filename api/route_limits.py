"""A per-user rate limit for REST routes that have none of their own: a token
bucket per (route group, user), shared by every node when Redis is configured."""

from __future__ import annotations

import redis.asyncio as aioredis

from api.errors import ApiError
from auth import Identity
from rooms.rate_limit import InProcessTokenBucket, RateLimiter
from rooms.redis_state import RedisTokenBucket


class RouteLimiter:
    def __init__(self, redis: aioredis.Redis | None, prefix: str, rate: float, burst: float) -> None:
        self.rate = rate
        self.bucket: RateLimiter = (
            RedisTokenBucket(redis, prefix, rate, burst) if redis is not None
            else InProcessTokenBucket(rate, burst)
        )

    async def check(self, group: str, identity: Identity) -> None:
        """429 ``rate_limited`` when ``identity`` has used up its requests of ``group``."""
        if not await self.bucket.allow(f"route:{group}:{identity.user_id}"):
            raise ApiError(
                429, "rate_limited", f"at most {self.rate:g} requests a second; try again shortly",
                headers={"Retry-After": "1"},
            )
