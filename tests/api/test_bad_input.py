"""Bad input gets 400 in the standard shape, never a 500, and the API never
writes non-finite JSON (issues 15.10 and 15.11)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import socketio

from api.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.conftest import RunningApp, rest

SHAPE = {"status", "code", "message", "requestId"}


async def _raw(app: RunningApp, request: bytes) -> tuple[int, dict]:
    """One HTTP/1.1 request as bytes (for headers aiohttp's client would not send)."""
    host, port = app.server.host, app.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(
        line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    ))
    body = await reader.readexactly(length)
    writer.close()
    return int(head.split()[1]), json.loads(body)


async def test_non_finite_and_huge_numbers_are_refused(running: RunningApp) -> None:
    status, room = await rest(running, "POST", "/api/v1/rooms", "ann", {"type": "live", "title": "t"})
    assert status == 201
    auth = {"Authorization": f"Bearer {running.token('ann')}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for raw in (
            b'{"chatTtlSeconds": 1e999}', b'{"chatTtlSeconds": NaN}', b'{"chatTtlSeconds": -Infinity}',
            b'{"maxViewers": 10000000000000000000000000000000000000000}', b'{"chatTtlSeconds": 1e12}',
        ):
            async with http.patch(f"{running.url}/api/v1/rooms/{room['id']}", data=raw, headers=auth) as r:
                body = await r.json()
                assert r.status == 400 and set(body) == SHAPE, (raw, body)
        async with http.get(f"{running.url}/api/v1/rooms?cursor={10**30}", headers=auth) as r:
            assert r.status == 400 and (await r.json())["code"] == "bad_cursor"
        async with http.get(f"{running.url}/api/v1/rooms?status=idle", headers=auth) as r:
            text = await r.text()
            assert r.status == 200 and "Infinity" not in text and "NaN" not in text
            json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    status, after = await rest(running, "GET", f"/api/v1/rooms/{room['id']}", "ann")
    assert after["chatTtlSeconds"] is None and after["maxViewers"] is None  # nothing changed


async def test_what_used_to_be_a_500_is_a_400(running: RunningApp) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    token = running.token("ann")
    async with aiohttp.ClientSession() as http:
        for path, headers in (
            ("/api/v1/rooms", {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}),
            ("/api/v1/webhooks/topup", {"Content-Type": "application/json"}),  # unauthenticated
        ):
            async with http.post(running.url + path, data=deep[:60_000] + deep[-60_000:], headers=headers) as r:
                assert r.status in (400, 401, 503), r.status
                assert set(await r.json()) == SHAPE
        async with http.post(
            running.url + "/api/v1/rooms", data=b'{"type": "live"}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=x-nope"},
        ) as r:
            assert r.status in (201, 400) and r.status != 500  # UTF-8 whatever the charset says
        async with http.post(
            running.url + "/api/v1/webhooks/topup", data=b"{}",
            headers={TIMESTAMP_HEADER: "\u00b2", SIGNATURE_HEADER: "sha256=00", "Content-Type": "application/json"},
        ) as r:
            assert r.status in (401, 503) and set(await r.json()) == SHAPE
        async with http.get(f"{running.url}/api/v1/gifts/leaderboard?limit=\u00b2") as r:
            assert r.status != 500
    # NUL, which PostgreSQL text cannot hold: in a path, a query, a JSON string
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {token}"}
        for path in ("/api/v1/users/a%00b/leaderboard", "/api/v1/rooms?status=a%00"):
            async with http.get(running.url + path, headers=auth) as r:
                assert r.status == 400 and set(await r.json()) == SHAPE, path
        async with http.post(running.url + "/api/v1/rooms", data=b'{"type": "live", "title": "a\\u0000b"}',
                             headers={**auth, "Content-Type": "application/json"}) as r:
            assert (r.status, (await r.json())["code"]) == (400, "bad_json")
    for host in (b"a:b:c", b"foo:99999"):
        status, body = await _raw(
            running,
            b"GET /api/v1/ice-servers HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: Bearer "
            + token.encode() + b"\r\nConnection: close\r\n\r\n",
        )
        assert (status, body["code"]) == (400, "bad_host") and set(body) == SHAPE
    status, _ = await rest(running, "GET", "/api/v1/wallet", "ann")
    assert status == 200


async def test_a_socket_event_with_nul_is_refused(running: RunningApp) -> None:
    status, room = await rest(running, "POST", "/api/v1/rooms", "ann", {"type": "live", "title": "t"})
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(running.url, auth={"token": running.token("ann")}, transports=["websocket"], wait_timeout=5)
    try:
        ack = await client.call("chat:send", {"roomId": room["id"], "text": "a\x00b"}, timeout=5)
        assert ack["error"]["code"] == "bad_request"
        ack = await client.call("chat:send", {"roomId": room["id"], "text": "fine"}, timeout=5)
        assert ack["seq"] == 1
    finally:
        await client.disconnect()
