"""The Redis version of presence's socket counter, shared by every node.

:class:`RedisSocketCounter` (``SocketCounter``): a user's sockets on every
node, per node, counting only nodes whose heartbeat key
(:func:`events.bus.node_key`) is alive: a node killed outright stops counting
within its heartbeat TTL. The script touches keys it computes from the prefix
(node heartbeat keys), so it suits one Redis server or a replicated pair, not
Redis Cluster.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from events.bus import node_key

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


__all__ = ["RedisSocketCounter"]
