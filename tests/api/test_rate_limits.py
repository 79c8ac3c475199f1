"""Rate limits where a client makes the server work: HTTP per user and per
address (429 with Retry-After), socket events (rate_limited ack), costly actions
(rooms, calls, sockets), shared across nodes through Redis, counted in metrics
(issue 15.8)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import aiohttp
import socketio

from config import Settings
from tests.conftest import RunningApp, start_app


async def _connect(app: RunningApp, user: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(app.url, auth={"token": app.token(user)}, transports=["websocket"], wait_timeout=5)
    return client


async def test_bursts_are_refused_with_retry_after_and_counted(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(rate_limit_http=50, rate_limit_http_ip=20, rate_limit_events=5, rate_limit_actions=1)
    app = await start_app(settings)
    clients: list[socketio.AsyncClient] = []
    try:
        async with aiohttp.ClientSession() as http:
            # 200 rooms in a burst: the first 10 (the burst of the actions limit), then 429
            auth = {"Authorization": f"Bearer {app.token('ann')}"}
            statuses = []
            for i in range(15):
                async with http.post(app.url + "/api/v1/rooms", json={"type": "live", "title": f"r{i}"},
                                     headers=auth) as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        body = await r.json()
                        assert body["code"] == "rate_limited" and r.headers["Retry-After"] == "1"
                        assert set(body) == {"status", "code", "message", "requestId"}
            assert statuses[:10] == [201] * 10 and statuses[10:] == [429] * 5
            # per address: anonymous requests from one address
            anonymous = [
                (await http.get(app.url + "/api/v1/rooms")).status for _ in range(45)
            ]
            assert 429 in anonymous and anonymous.count(200) <= 40
            async with http.get(app.url + "/metrics") as r:
                metrics = await r.text()
        for limit in ("actions", "http_ip"):
            assert re.search(rf'airwave_rate_limited_total{{[^}}]*limit="{limit}"[^}}]*}} [1-9]', metrics), limit

        # socket events: 300 chat:typing in a burst are not all relayed
        bob = await _connect(app, "bob")
        clients.append(bob)
        acks = await asyncio.gather(*(
            bob.call("chat:typing", {"roomId": "nowhere", "on": True}, timeout=10) for _ in range(30)
        ))
        codes = [a["error"]["code"] for a in acks]
        assert codes.count("rate_limited") >= 15 and "room_not_found" in codes
        # sockets on one token: the burst, then refused
        refused = 0
        for _ in range(12):
            try:
                clients.append(await _connect(app, "cat"))
            except socketio.exceptions.ConnectionError:
                refused += 1
        assert refused >= 2
    finally:
        for client in clients:
            if client.connected:
                await client.disconnect()
        await app.server.close()
