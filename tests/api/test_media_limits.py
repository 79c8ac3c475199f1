"""One token or one address cannot fill the media server: per-user and per-address
limits on sessions still connecting, and a short connect timeout (issue 15.6)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import socketio

from api.components import AIRWAVE
from config import Settings
from tests.conftest import RunningApp, start_app
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, Viewer, wait_for

SDP = "application/sdp"


async def _whep(http: aiohttp.ClientSession, app: RunningApp, room: str, user: str) -> tuple[int, dict, Viewer]:
    viewer = Viewer(("video",))  # offers and never answers: a session that stays connecting
    headers = {"Authorization": f"Bearer {app.token(user, room='*', subscribe=True)}", "Content-Type": SDP}
    async with http.post(f"{app.url}/whep/{room}", data=await viewer.offer(), headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else {}
        if r.status == 429:
            assert r.headers["Retry-After"] == "5"
            assert set(body) == {"status", "code", "message", "requestId"}
        return r.status, body, viewer


async def test_connecting_sessions_are_limited_per_user_and_per_address(
    make_settings: Callable[..., Settings],
) -> None:
    app = await start_app(make_settings(
        max_connecting_per_user=2, max_connecting_per_ip=3, media_connect_timeout=2,
    ))
    publisher = Publisher([PacketTrack("video", encoded_vp8(20))])
    viewers: list[Viewer] = []
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {app.token('pub', room='q', publish=True)}", "Content-Type": SDP}
            async with http.post(f"{app.url}/whip/q", data=await publisher.offer(), headers=headers) as r:
                assert r.status == 201
                await publisher.accept(await r.text())
            # connected: the publisher's own session from this address no longer counts as connecting
            engine = app.app[AIRWAVE].media
            await wait_for(lambda: [x.state for x in engine.sessions()] == ["connected"], 10)
            results = []
            for user in ("vic", "vic", "vic", "wes", "wes"):
                status, body, viewer = await _whep(http, app, "q", user)
                viewers.append(viewer)
                results.append((status, body.get("code")))
            assert results == [
                (201, None), (201, None),
                (429, "too_many_connecting"),  # vic's third while two still connect
                (201, None),
                (429, "too_many_connecting"),  # the address holds three connecting
            ]
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(app.url, auth={"token": app.token("vic", room="*", subscribe=True)},
                                 transports=["websocket"], wait_timeout=5)
            extra = Viewer(("video",))
            viewers.append(extra)
            ack = await client.call("sfu:subscribe", {"roomId": "q", "sdp": await extra.offer()}, timeout=10)
            assert ack["error"]["code"] == "too_many_connecting"
            await client.disconnect()
            # sessions that never connect end at the connect timeout and free their places
            deadline = time.monotonic() + 10
            while True:
                status, _, viewer = await _whep(http, app, "q", "vic")
                viewers.append(viewer)
                if status == 201:
                    break
                assert time.monotonic() < deadline, "the connecting sessions never timed out"
                await asyncio.sleep(0.5)
    finally:
        for peer in (publisher, *viewers):
            await peer.close()
        await app.server.close()
