"""Redis versions of the rooms' per-process state, shared by every node.

- :class:`RedisViewerCounter` (``ViewerCounter``): who watches which room.
- :class:`RedisSocketCounter` (``SocketCounter``): a user's sockets on every
  node, per node, counting only nodes whose heartbeat key (api/nodes.py) is
  alive: a node killed outright stops counting within its heartbeat TTL.
- :class:`RedisTokenBucket` (``RateLimiter``): token buckets in one Lua script
  on Redis's clock.
- :class:`RedisPartySockets` (``PartySockets``): a call party's sockets in
  the call's audience on every node, for the reconnect grace.
- :class:`RedisCallLocks` (``CallLocks``): "this user is in call X", taken for
  both parties at once (SET-if-absent in Lua) so two calls cannot both ring.

Every key starts with the cluster's ``redis_prefix``. The scripts touch keys
they compute from the prefix (node heartbeat keys), so they suit one Redis
server or a replicated pair, not Redis Cluster.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from rooms.bus import node_key

DAY = 86400

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


# KEYS: the user's hash (node -> sockets). ARGV: this node, delta (0 = just count),
# the node heartbeat key prefix. Returns the user's sockets on live nodes.
_SOCKETS = """
local delta = tonumber(ARGV[2])
if delta ~= 0 then
  local here = redis.call('HINCRBY', KEYS[1], ARGV[1], delta)
  if here <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
end
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local node = fields[i]
  if node == ARGV[1] or redis.call('EXISTS', ARGV[3] .. node) == 1 then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], node)
  end
end
if total > 0 then redis.call('EXPIRE', KEYS[1], 86400) end
return total
"""


class RedisSocketCounter:
    """Sockets per user across nodes, for presence and the calls' reconnect grace."""

    def __init__(self, redis: aioredis.Redis, prefix: str, node_id: str, name: str = "sockets") -> None:
        self._redis = redis
        self._prefix = f"{prefix}:{name}:"
        self._nodes = node_key(prefix, "")
        self._node_id = node_id
        self._script = redis.register_script(_SOCKETS)

    async def _apply(self, user_id: str, delta: int) -> int:
        return int(await self._script(keys=[self._prefix + user_id], args=[self._node_id, delta, self._nodes]))

    async def add(self, user_id: str) -> int:
        return await self._apply(user_id, 1)

    async def remove(self, user_id: str) -> int:
        return await self._apply(user_id, -1)

    async def count(self, user_id: str) -> int:
        return await self._apply(user_id, 0)

    async def clear(self, user_id: str) -> None:
        await self._redis.delete(self._prefix + user_id)


class RedisPartySockets:
    """``PartySockets``: each party's sockets in a call's audience, per node."""

    def __init__(self, redis: aioredis.Redis, prefix: str, node_id: str) -> None:
        self._counter = RedisSocketCounter(redis, prefix, node_id, name="callsockets")

    async def joined(self, call_id: str, user_id: str) -> int:
        return await self._counter.add(f"{call_id}:{user_id}")

    async def left(self, call_id: str, user_id: str) -> int:
        return await self._counter.remove(f"{call_id}:{user_id}")

    async def clear(self, call_id: str, *users: str) -> None:
        for user in users:
            await self._counter.clear(f"{call_id}:{user}")


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


# KEYS: caller's lock, callee's lock. ARGV: call id, ttl, stale caller call, stale callee call
# (a call id known to be over, whose lock may be taken over; "" = none).
# Returns 0 taken, 1 the caller is in another call, 2 the callee is.
_TAKE_PAIR = """
for i = 1, 2 do
  local held = redis.call('GET', KEYS[i])
  if held and held ~= ARGV[i + 2] then return i end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 0
"""

# KEYS: the locks. ARGV: call id. Releases only the locks this call holds.
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""


class RedisCallLocks:
    """``<prefix>:incall:<user>`` = call id, for both parties of a live call."""

    def __init__(self, redis: aioredis.Redis, prefix: str, ttl: float = DAY) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:incall:"
        self._ttl = max(1, int(ttl))
        self._take = redis.register_script(_TAKE_PAIR)
        self._release = redis.register_script(_RELEASE)

    async def holder(self, user_id: str) -> str | None:
        raw = await self._redis.get(self._prefix + user_id)
        return raw.decode() if raw else None

    async def take(self, call_id: str, caller_id: str, callee_id: str, stale: dict[str, str]) -> int:
        keys = [self._prefix + caller_id, self._prefix + callee_id]
        args = [call_id, self._ttl, stale.get(caller_id, ""), stale.get(callee_id, "")]
        return int(await self._take(keys=keys, args=args))

    async def release(self, call_id: str, *users: str) -> None:
        await self._release(keys=[self._prefix + u for u in users], args=[call_id])


__all__ = ["RedisCallLocks", "RedisPartySockets", "RedisSocketCounter", "RedisTokenBucket", "RedisViewerCounter"]
