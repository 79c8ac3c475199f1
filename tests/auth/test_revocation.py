"""A socket lives no longer than its token; suspension and revoked token ids end
sockets and media at once and refuse the token afterwards (issue 15.5)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import socketio

from api.components import AIRWAVE
from auth import TokenService
from tests.conftest import RunningApp, rest
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher


async def _socket(app: RunningApp, token: str) -> tuple[socketio.AsyncClient, list[tuple[str, Any]]]:
    client = socketio.AsyncClient(reconnection=False)
    heard: list[tuple[str, Any]] = []
    for event in ("auth:expired", "auth:revoked"):
        client.on(event, lambda data, event=event: heard.append((event, data)))
    await client.connect(app.url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    return client, heard


async def _until(check, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


async def test_minted_tokens_carry_a_jti(running: RunningApp) -> None:
    identity = TokenService(running.settings).verify(running.token("ann"))
    other = TokenService(running.settings).verify(running.token("ann"))
    assert identity.token_id and identity.token_id != other.token_id


async def test_a_socket_ends_at_exp_unless_refreshed(running: RunningApp) -> None:
    status, room = await rest(running, "POST", "/api/v1/rooms", "ann", {"type": "live", "title": "t"})
    assert status == 201
    stale, stale_heard = await _socket(running, running.token("ann", ttl=2))
    fresh, _ = await _socket(running, running.token("ann", ttl=2))
    try:
        ack = await fresh.call("auth:refresh", {"token": running.token("bob")}, timeout=5)
        assert ack["error"]["code"] == "wrong_user"
        ack = await fresh.call("auth:refresh", {"token": "garbage"}, timeout=5)
        assert ack["error"]["code"] == "invalid_token"
        ack = await fresh.call("auth:refresh", {"token": running.token("ann", ttl=600)}, timeout=5)
        assert ack["expiresAt"] > time.time() + 500
        await _until(lambda: not stale.connected, 6, "the stale socket ended at exp")
        assert stale_heard == [("auth:expired", {"code": "token_expired"})]
        ack = await fresh.call("chat:send", {"roomId": room["id"], "text": "still here"}, timeout=5)
        assert ack["seq"] == 1  # the refreshed socket outlives its first token
    finally:
        for client in (stale, fresh):
            if client.connected:
                await client.disconnect()


async def test_suspension_ends_sockets_and_media_and_refuses_the_token(running: RunningApp) -> None:
    room = "sam-live"
    token = running.token("sam", room=room, publish=True, subscribe=True, ttl=600)
    client, heard = await _socket(running, token)
    publisher = Publisher([PacketTrack("video", encoded_vp8(20))])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
    engine = running.app[AIRWAVE].media
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{running.url}/whip/{room}", data=await publisher.offer(), headers=headers) as r:
            assert r.status == 201, await r.text()
            await publisher.accept(await r.text())
        assert any(s.owner == "sam" for s in engine.sessions())
        status, body = await rest(running, "POST", "/api/v1/admin/users/sam/suspend", "sam", {})
        assert (status, body["code"]) == (403, "forbidden")  # not an admin
        status, body = await rest(running, "POST", "/api/v1/admin/users/sam/suspend", "root", {}, admin=True)
        assert status == 200 and body == {"userId": "sam", "suspended": True}
        await _until(lambda: not client.connected, 2, "sam's socket ended")
        await _until(lambda: not any(s.owner == "sam" for s in engine.sessions()), 2, "sam's media ended")
        assert heard == [("auth:revoked", {"code": "suspended"})]
        async with http.get(f"{running.url}/api/v1/wallet", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 401 and (await r.json())["code"] == "suspended"
        refused = socketio.AsyncClient(reconnection=False)
        try:
            await refused.connect(running.url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
            raise AssertionError("a suspended user's socket was accepted")
        except socketio.exceptions.ConnectionError:
            pass
        status, _ = await rest(running, "DELETE", "/api/v1/admin/users/sam/suspend", "root", admin=True)
        assert status == 200
        async with http.get(f"{running.url}/api/v1/wallet", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
    await publisher.close()


async def test_a_revoked_stream_token_ends_its_session_only(running: RunningApp) -> None:
    """A leaked OBS token: its WHIP session ends; the same user's other token still works."""
    room = "obs-live"
    leaked = running.token("olga", room=room, publish=True, ttl=600)
    other = running.token("olga", ttl=600)
    jti = TokenService(running.settings).verify(leaked).token_id
    publisher = Publisher([PacketTrack("video", encoded_vp8(20))])
    engine = running.app[AIRWAVE].media
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {leaked}", "Content-Type": "application/sdp"}
        async with http.post(f"{running.url}/whip/{room}", data=await publisher.offer(), headers=headers) as r:
            assert r.status == 201, await r.text()
            await publisher.accept(await r.text())
        client, heard = await _socket(running, other)
        status, body = await rest(running, "POST", f"/api/v1/admin/tokens/{jti}/revoke", "root", admin=True)
        assert status == 200 and body == {"jti": jti, "revoked": True}
        await _until(lambda: not any(s.owner == "olga" for s in engine.sessions()), 2, "the WHIP session ended")
        async with http.post(f"{running.url}/whip/{room}", data="v=0", headers=headers) as r:
            assert r.status == 401 and (await r.json())["code"] == "token_revoked"
        assert client.connected and heard == []
        await client.disconnect()
    await publisher.close()
