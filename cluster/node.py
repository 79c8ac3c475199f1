"""This node's place in the cluster: one object the faces use, built once
for one node (everything here) or for several sharing Redis."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from auth import TokenService
from cluster.calls import CallMediaRouter, is_call_room
from cluster.directory import LocalMediaDirectory, MediaDirectory, RedisMediaDirectory
from cluster.edge import EdgePuller, Spawn
from cluster.nodes import (
    LocalNodeRegistry,
    NodeAddress,
    NodeClient,
    NodeRegistry,
    RedisNodeRegistry,
    internal_url,
)
from config import Settings
from events.bus import EventBus
from sfu import MediaEngine

log = logging.getLogger("airwave.cluster")


@dataclass
class Cluster:
    me: NodeAddress
    nodes: NodeRegistry
    directory: MediaDirectory
    client: NodeClient
    edge: EdgePuller
    calls: CallMediaRouter

    @classmethod
    def build(
        cls,
        settings: Settings,
        tokens: TokenService,
        engine: MediaEngine,
        redis: aioredis.Redis | None,
        node_id: str,
        spawn: Spawn,
    ) -> Cluster:
        me = NodeAddress(node_id, internal_url(settings))
        prefix = settings.redis_prefix
        nodes: NodeRegistry
        directory: MediaDirectory
        if redis is None:
            nodes, directory = LocalNodeRegistry(), LocalMediaDirectory(me)
        else:
            nodes = RedisNodeRegistry(redis, prefix, node_id)
            directory = RedisMediaDirectory(redis, prefix, me)
        client = NodeClient(tokens, node_id)
        return cls(
            me, nodes, directory, client, EdgePuller(engine, directory, client, spawn),
            CallMediaRouter(directory, client),
        )

    def track_origins(self, bus: EventBus, engine: MediaEngine) -> None:
        """Claim and release the origin of rooms whose publisher is on this node
        (from this node's ``media`` events)."""

        async def media_event(event: dict[str, Any]) -> None:
            room = str(event.get("roomId") or "")
            if not room or is_call_room(room):  # call rooms have their own media node
                return
            session = engine.session(str(event.get("sessionId") or ""))
            try:
                if event.get("type") == "publisher_started":
                    if session is None or not session.pulled:
                        await self.directory.claim_origin(room)
                elif event.get("type") == "publisher_ended":
                    await self.directory.release_origin(room)
            except Exception as exc:  # Redis down: viewers elsewhere cannot find the room meanwhile
                log.warning("media registry: %s", exc)

        bus.subscribe("media", media_event)

    async def close(self) -> None:
        await self.edge.close()
        await self.client.close()


__all__ = ["Cluster"]
