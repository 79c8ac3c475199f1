"""Clients for the calls tests: Socket.IO parties that record every event they hear, and REST."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import socketio

from tests.conftest import RunningApp, rest  # noqa: F401 - rest is re-exported to the tests

# The short timings every calls test runs with (seconds).
TIMINGS = {
    "ring_timeout": 1,
    "call_duration": 3,
    "call_warning_before": 1,
    "call_extension": 2,
    "reconnect_grace": 1,
}


class Party:
    """One connected socket of a user; keeps every event it receives, in order."""

    def __init__(self, app: RunningApp, user: str) -> None:
        self.app = app
        self.user = user
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.client.on("*", self._record)

    async def _record(self, event: str, data: Any = None) -> None:
        self.events.append((event, data))

    async def connect(self) -> Party:
        await self.client.connect(
            self.app.url, auth={"token": self.app.token(self.user)}, transports=["websocket"], wait_timeout=5
        )
        return self

    async def call(self, event: str, data: Any = None, within: float = 5) -> Any:
        return await self.client.call(event, data, timeout=within)

    def seen(self, event: str, call_id: str | None = None) -> list[Any]:
        return [
            data
            for name, data in self.events
            if name == event and (call_id is None or (isinstance(data, dict) and data.get("callId") == call_id))
        ]

    async def wait(self, event: str, call_id: str | None = None, within: float = 4.0) -> Any:
        deadline = time.monotonic() + within
        while True:
            found = self.seen(event, call_id)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user}: no {event} for {call_id} in {within}s; got {self.events!r}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()

    async def abort(self) -> None:
        """Drop the TCP connection: a shutting-down server never answers the
        websocket close handshake (the client would wait 5 s for it)."""
        ws = self.client.eio.ws
        if ws is not None and ws._response is not None and ws._response.connection is not None:
            ws._response.connection.transport.abort()
        await self.client.eio.disconnect(abort=True)


class Parties:
    """Connects parties and disconnects them all at the end of a test."""

    def __init__(self, app: RunningApp) -> None:
        self.app = app
        self.all: list[Party] = []

    async def __call__(self, user: str) -> Party:
        party = await Party(self.app, user).connect()
        self.all.append(party)
        return party

    async def close(self) -> None:
        for party in self.all:
            await party.close()


async def record(app: RunningApp, call_id: str, user: str = "alice") -> dict[str, Any]:
    status, body = await rest(app, "GET", f"/api/v1/calls/{call_id}", user)
    assert status == 200, body
    return body


async def ring(caller: Party, callee: Party, media: str = "video") -> str:
    """caller calls callee; returns the call id once the callee's socket rings."""
    ack = await caller.call("call:initiate", {"to": callee.user, "media": media})
    assert "callId" in ack, ack
    await callee.wait("call:incoming", ack["callId"])
    return ack["callId"]


async def answered(caller: Party, callee: Party, media: str = "video") -> str:
    call_id = await ring(caller, callee, media)
    ack = await callee.call("call:answer", {"callId": call_id})
    assert ack["callId"] == call_id, ack
    await caller.wait("call:answered", call_id)
    return call_id
