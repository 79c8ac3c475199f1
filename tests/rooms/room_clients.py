"""Clients for the rooms tests: Socket.IO sockets that record what they hear, and REST calls."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import socketio

from tests.conftest import RunningApp, rest  # noqa: F401 - rest is re-exported to the tests

EVENTS = (
    "chat:message", "chat:deleted", "chat:read", "chat:typing",
    "stream:started", "stream:ended", "stream:viewers", "stream:kicked",
    "presence:online", "presence:offline",
)


class Listener:
    """A connected socket that keeps every room event it receives, in order."""

    def __init__(self, client: socketio.AsyncClient) -> None:
        self.client = client
        self.events: dict[str, list[Any]] = defaultdict(list)
        self.arrivals: dict[str, list[float]] = defaultdict(list)  # time.monotonic() of each event
        for name in EVENTS:
            client.on(name, self._recorder(name))

    def _recorder(self, name: str):  # type: ignore[no-untyped-def]
        async def record(data: Any) -> None:
            self.events[name].append(data)
            self.arrivals[name].append(time.monotonic())

        return record

    async def call(self, event: str, data: Any, wait_seconds: float = 5) -> Any:
        return await self.client.call(event, data, timeout=wait_seconds)

    async def wait(self, event: str, predicate=lambda e: True, within: float = 5.0) -> Any:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + within
        while True:
            for item in self.events[event]:
                if predicate(item):
                    return item
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} matching in {within}s; got {self.events[event]!r}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.client.disconnect()


async def connect(app: RunningApp, user: str, **grants: Any) -> Listener:
    client = socketio.AsyncClient(reconnection=False)
    listener = Listener(client)
    await client.connect(app.url, auth={"token": app.token(user, **grants)}, transports=["websocket"], wait_timeout=5)
    return listener


async def create_room(app: RunningApp, owner: str = "alice", **body: Any) -> dict[str, Any]:
    status, room = await rest(app, "POST", "/api/v1/rooms", owner, {"type": "live", "title": "t", **body})
    assert status == 201, room
    return room
