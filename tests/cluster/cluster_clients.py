"""Clients for cluster tests: a Socket.IO client that records events, and REST."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import socketio

from tests.cluster.nodes import Cluster, Node


class Peer:
    """A user's socket on one node, recording every server event it gets."""

    def __init__(self, user: str, node: Node, sio: socketio.AsyncClient) -> None:
        self.user = user
        self.node = node
        self.sio = sio
        self.events: list[tuple[float, str, Any]] = []
        sio.on("*", self._record)

    async def _record(self, event: str, data: Any = None) -> None:
        self.events.append((time.time(), event, data))

    @classmethod
    async def connect(cls, cluster: Cluster, node: Node, user: str) -> Peer:
        sio = socketio.AsyncClient(reconnection=False)
        peer = cls(user, node, sio)
        await sio.connect(node.url, auth={"token": cluster.token(user)}, transports=["websocket"], wait_timeout=5)
        cluster.sockets.append(sio)
        return peer

    async def call(self, event: str, data: Any) -> Any:
        return await self.sio.call(event, data, timeout=10)

    def got(self, name: str) -> list[Any]:
        return [d for _, n, d in self.events if n == name]

    async def wait(self, name: str, count: int = 1, within: float = 10.0) -> list[tuple[float, Any]]:
        deadline = time.monotonic() + within
        while True:
            seen = [(t, d) for t, n, d in self.events if n == name]
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user}@{self.node.node_id}: {count} x {name} not in {within}s; "
                                     f"got {[n for _, n, _ in self.events]}")
            await asyncio.sleep(0.02)


async def rest(cluster: Cluster, node: Node, method: str, path: str, user: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = {"Authorization": f"Bearer {cluster.token(user)}", **(headers or {})}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, node.url + path, json=body, headers=hdrs,
                                timeout=aiohttp.ClientTimeout(total=10)) as r:
            return r.status, await r.json()
