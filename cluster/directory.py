"""The media directory: which node holds each room's media and each call's.

With Redis, a room's media lives on one node, its **origin**: the node where
its publisher is (``{prefix}:media:origin:{room}`` = ``{"node", "url"}``, set
when a publisher starts there and cleared when it ends). A call's media lives
on the node of the first party that negotiates (``{prefix}:call:media:{callId}``).
An entry naming a node whose heartbeat is gone is void: its media went with it.
On one node, everything is here.
"""

from __future__ import annotations

import json
from typing import Protocol

import redis.asyncio as aioredis

from cluster.nodes import NodeAddress
from events.bus import node_key

CALL_MEDIA_TTL = 24 * 3600
# Delete KEYS[1] only while it still holds ARGV[1]: our own claim, not a newer one.
_DELETE_IF_OURS = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# Claim KEYS[1] for ARGV[1] (expiring in ARGV[2] s) unless it is held: nil when this
# call claimed it, else the holder. One round trip for every media request of a call.
_CLAIM_UNLESS_HELD = (
    "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return false end "
    "return redis.call('GET', KEYS[1])"
)


class MediaDirectory(Protocol):
    me: NodeAddress

    async def claim_origin(self, room: str) -> None:
        """This node's publisher started ``room``."""
        ...

    async def release_origin(self, room: str) -> None:
        """This node's publisher of ``room`` ended (a newer claim elsewhere stays)."""
        ...

    async def origin_of(self, room: str) -> NodeAddress | None:
        """The live node holding the room's publisher, if another node knows one."""
        ...

    async def call_media_node(self, call_id: str) -> NodeAddress:
        """The call's media node; the first node to ask becomes it."""
        ...

    async def forget_call(self, call_id: str) -> None:
        """The call ended."""
        ...


class LocalMediaDirectory:
    """One node: every room's and call's media is here."""

    def __init__(self, me: NodeAddress) -> None:
        self.me = me

    async def claim_origin(self, room: str) -> None:
        return None

    async def release_origin(self, room: str) -> None:
        return None

    async def origin_of(self, room: str) -> NodeAddress | None:
        return None

    async def call_media_node(self, call_id: str) -> NodeAddress:
        return self.me

    async def forget_call(self, call_id: str) -> None:
        return None


class RedisMediaDirectory:
    """The directory in Redis, shared by every node."""

    def __init__(self, redis: aioredis.Redis, prefix: str, me: NodeAddress) -> None:
        self.redis = redis
        self.prefix = prefix
        self.me = me

    def _origin_key(self, room: str) -> str:
        return f"{self.prefix}:media:origin:{room}"

    def _call_key(self, call_id: str) -> str:
        return f"{self.prefix}:call:media:{call_id}"

    def _encode(self) -> str:
        return json.dumps({"node": self.me.node, "url": self.me.url})

    async def _alive(self, raw: bytes | None) -> NodeAddress | None:
        if not raw:
            return None
        value = json.loads(raw)
        address = NodeAddress(str(value["node"]), str(value["url"]))
        if address.node != self.me.node and not await self.redis.exists(node_key(self.prefix, address.node)):
            return None  # that node is gone (killed): its media went with it
        return address

    async def claim_origin(self, room: str) -> None:
        await self.redis.set(self._origin_key(room), self._encode())

    async def release_origin(self, room: str) -> None:
        # only our own claim: a new publisher elsewhere may have taken the room over
        await self.redis.eval(_DELETE_IF_OURS, 1, self._origin_key(room), self._encode())

    async def origin_of(self, room: str) -> NodeAddress | None:
        return await self._alive(await self.redis.get(self._origin_key(room)))

    async def call_media_node(self, call_id: str) -> NodeAddress:
        key = self._call_key(call_id)
        held = await self.redis.eval(_CLAIM_UNLESS_HELD, 1, key, self._encode(), CALL_MEDIA_TTL)
        if held is None:  # claimed now
            return self.me
        address = await self._alive(held)
        if address is None:  # its node died: this one takes the call's media over
            await self.redis.set(key, self._encode(), ex=CALL_MEDIA_TTL)
            return self.me
        return address

    async def forget_call(self, call_id: str) -> None:
        await self.redis.eval(_DELETE_IF_OURS, 1, self._call_key(call_id), self._encode())


__all__ = ["LocalMediaDirectory", "MediaDirectory", "RedisMediaDirectory"]
