"""Redis versions of the calls' per-process state, shared by every node.

- :class:`RedisPartySockets` (``PartySockets``): a call party's sockets in
  the call's audience on every node, for the reconnect grace.
- :class:`RedisCallLocks` (``CallLocks``): "this user is in call X", taken for
  both parties at once (SET-if-absent in Lua) so two calls cannot both ring.

Every key starts with the cluster's ``redis_prefix``.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from presence.redis_sockets import RedisSocketCounter

DAY = 86400


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


__all__ = ["RedisCallLocks", "RedisPartySockets"]
