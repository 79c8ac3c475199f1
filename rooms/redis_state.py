"""Redis versions of the rooms' per-process state, shared by every node.

- :class:`RedisViewerCounter` (``ViewerCounter``): who watches which room.
- :class:`RedisTokenBucket` (``RateLimiter``): token buckets in one Lua script
  on Redis's clock.

(Presence's socket counter is presence/redis_sockets.py; the calls' locks and
party sockets calls/redis_state.py.) Every key starts with the cluster's
``redis_prefix``.
"""

from __future__ import annotations

import redis.asyncio as aioredis

# KEYS: the room's hash. ARGV: viewer, +1/-1. Returns the number of viewers.
_VIEWER_DELTA = """
local refs = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
if refs <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], 86400)
return redis.call('HLEN', KEYS[1])
"""


class RedisViewerCounter:
    """A hash per room: viewer key -> references (sockets, sessions) on any node."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:viewers:"
        self._delta = redis.register_script(_VIEWER_DELTA)

    def _key(self, room_id: str) -> str:
        return self._prefix + room_id

    async def join(self, room_id: str, viewer: str) -> int:
        return int(await self._delta(keys=[self._key(room_id)], args=[viewer, 1]))

    async def leave(self, room_id: str, viewer: str) -> int:
        if not await self._redis.hexists(self._key(room_id), viewer):
            return await self.count(room_id)
        return int(await self._delta(keys=[self._key(room_id)], args=[viewer, -1]))

    async def count(self, room_id: str) -> int:
        return int(await self._redis.hlen(self._key(room_id)))

    async def has(self, room_id: str, viewer: str) -> bool:
        return bool(await self._redis.hexists(self._key(room_id), viewer))

    async def viewers(self, room_id: str) -> list[str]:
        return sorted(v.decode() for v in await self._redis.hkeys(self._key(room_id)))

    async def clear(self, room_id: str) -> None:
        await self._redis.delete(self._key(room_id))


# KEYS: the bucket hash. ARGV: rate, burst. Redis's clock, so nodes agree.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return allowed
"""


class RedisTokenBucket:
    """``rate`` tokens a second up to ``burst`` per key, shared by every node."""

    def __init__(self, redis: aioredis.Redis, prefix: str, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._prefix = f"{prefix}:ratelimit:"
        self._script = redis.register_script(_TOKEN_BUCKET)

    async def allow(self, key: str) -> bool:
        return bool(await self._script(keys=[self._prefix + key], args=[repr(self.rate), repr(self.burst)]))


__all__ = ["RedisTokenBucket", "RedisViewerCounter"]
