"""A real HTTP receiver of airwave's outgoing webhooks, as an app's backend would
run one: it verifies every signature (written here from docs/webhooks.md, not
imported from the server), can be "down" (503) for a while, and keeps every
event it accepted, in arrival order."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


def verify(secret: str, timestamp: str, header: str, body: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, part.strip()) for part in header.split(","))


class Receiver:
    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        self.down = False
        self.events: list[dict[str, Any]] = []
        self.refused_down = 0
        self.bad_signatures = 0
        self.signature_headers: list[str] = []
        self.hold: asyncio.Event | None = None  # while set and not yet fired, requests hang
        self.held = 0
        app = web.Application()
        app.router.add_post("/hooks", self._hook)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    async def start(self) -> Receiver:
        await self.server.start_server()
        return self

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hooks"))

    async def _hook(self, request: web.Request) -> web.Response:
        if self.hold is not None and not self.hold.is_set():
            self.held += 1
            await self.hold.wait()
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # the sender is gone: it never got an answer
        if self.down:
            self.refused_down += 1
            return web.Response(status=503)
        body = await request.read()
        timestamp = request.headers.get("X-Airwave-Timestamp", "")
        header = request.headers.get("X-Airwave-Signature", "")
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= 300
        if not fresh or not all(verify(secret, timestamp, header, body) for secret in self.secrets):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.signature_headers.append(header)
        self.events.append(json.loads(body))
        return web.json_response({"ok": True})

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]

    async def wait_for(self, count: int, event_type: str | None = None, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while True:
            got = len(self.of_type(event_type) if event_type else {e["id"] for e in self.events})
            if got >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{got} of {count} events in {within}s: {self.events!r}")
            await asyncio.sleep(0.05)

    async def wait_refused(self, count: int, within: float = 10.0) -> None:
        """Until the receiver, while down, has turned away ``count`` deliveries."""
        deadline = time.monotonic() + within
        while True:
            if self.refused_down >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.refused_down} of {count} deliveries refused in {within}s")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.hold is not None:
            self.hold.set()  # a held request would keep aiohttp's shutdown waiting its 60 s
        await self.server.close()
