"""Live status with a real WHIP publisher, the publisher grace, debounced viewer counts, presence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest

from api.components import AIRWAVE
from config import Settings
from tests.conftest import RunningApp, start_app
from tests.rooms.room_clients import connect, create_room, rest
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher


@pytest.fixture(scope="module")
def vp8() -> list:
    return encoded_vp8(30)


async def media_event(app: RunningApp, kind: str, room_id: str, user: str, session: str = "s1") -> None:
    """What api/media.py announces for its sessions (this node's own facts: local)."""
    event = {"type": kind, "roomId": room_id, "sessionId": session, "userId": user}
    await app.app[AIRWAVE].bus.publish("media", event, local=True)


async def test_whip_publisher_starts_and_ends_the_stream(make_settings: Callable[..., Settings], vp8) -> None:
    app = await start_app(make_settings(room_publisher_grace=0.5))
    try:
        room = await create_room(app, "alice", title="show")
        bob = await connect(app, "bob")
        assert (await bob.call("stream:join", {"roomId": room["id"]}))["status"] == "idle"
        publisher = Publisher([PacketTrack("video", vp8)])
        headers = {"Authorization": f"Bearer {app.token('alice', room=room['id'], publish=True)}",
                   "Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{app.url}/whip/{room['id']}", data=await publisher.offer(), headers=headers) as r:
                assert r.status == 201, await r.text()
                await publisher.accept(await r.text())
                location = r.headers["Location"]
            started = await bob.wait("stream:started", within=15)
            assert started["roomId"] == room["id"] and started["streamId"] and started["resumed"] is False
            _, live = await rest(app, "GET", f"/api/v1/rooms/{room['id']}", "bob")
            assert live["status"] == "live" and live["streamId"] == started["streamId"] and live["liveAt"]
            async with http.delete(app.url + location, headers={"Authorization": headers["Authorization"]}) as r:
                assert r.status == 200
            gone_at = time.monotonic()
            ended = await bob.wait("stream:ended", within=10)
            assert ended == {"roomId": room["id"], "reason": "publisher_gone"}
            assert time.monotonic() - gone_at >= 0.4  # the grace was waited out
        _, after = await rest(app, "GET", f"/api/v1/rooms/{room['id']}", "bob")
        assert after["status"] == "ended" and after["endedAt"]
        await publisher.close()

        # publishing into a room id nobody created makes a live room owned by the publisher
        fresh = Publisher([PacketTrack("video", vp8)])
        headers["Authorization"] = f"Bearer {app.token('zoe', room='zoe-live', publish=True)}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{app.url}/whip/zoe-live", data=await fresh.offer(), headers=headers) as r:
                assert r.status == 201, await r.text()
                await fresh.accept(await r.text())
            deadline = time.monotonic() + 15
            while True:
                _, made = await rest(app, "GET", "/api/v1/rooms/zoe-live", "bob")
                if made.get("status") == "live":
                    break
                assert time.monotonic() < deadline, made
                await asyncio.sleep(0.1)
            assert (made["type"], made["ownerId"], made["title"], made["public"]) == ("live", "zoe", "zoe-live", True)
        await fresh.close()
        await bob.close()
    finally:
        await app.server.close()


async def test_publisher_back_within_grace_keeps_the_stream(make_settings: Callable[..., Settings]) -> None:
    app = await start_app(make_settings(room_publisher_grace=0.6))
    try:
        room = await create_room(app, "alice")
        bob = await connect(app, "bob")
        await bob.call("stream:join", {"roomId": room["id"]})
        await media_event(app, "publisher_started", room["id"], "alice")
        first = await bob.wait("stream:started")
        await media_event(app, "publisher_ended", room["id"], "alice")
        await asyncio.sleep(0.2)
        await media_event(app, "publisher_started", room["id"], "alice", "s2")
        resumed = await bob.wait("stream:started", lambda e: e["resumed"])
        assert resumed["streamId"] == first["streamId"]
        await asyncio.sleep(0.8)  # past the first grace: nothing ended
        assert bob.events["stream:ended"] == []
        _, live = await rest(app, "GET", f"/api/v1/rooms/{room['id']}", "bob")
        assert live["status"] == "live"
        await bob.close()
    finally:
        await app.server.close()


async def test_viewer_counts_once_per_user_debounced(running: RunningApp) -> None:
    room = await create_room(running, "alice")
    room_id = room["id"]
    await media_event(running, "publisher_started", room_id, "alice")
    watcher = await connect(running, "watcher")
    await watcher.call("stream:join", {"roomId": room_id})
    await watcher.wait("stream:viewers", lambda e: e["count"] == 1)
    others = [await connect(running, f"v{i}") for i in range(4)]
    twin = await connect(running, "v0")  # a second socket of v0: still one viewer
    for s in [*others, twin]:
        await s.call("stream:join", {"roomId": room_id})
    await media_event(running, "subscriber_joined", room_id, "v1", "w1")  # v1 on WHEP too: still one
    await media_event(running, "subscriber_joined", room_id, "", "anon-1")  # anonymous WHEP viewers
    await media_event(running, "subscriber_joined", room_id, "", "anon-2")
    await others[3].close()  # v3 leaves by disconnecting
    await others[2].call("stream:leave", {"roomId": room_id})
    # watcher + v0 + v1 + two anonymous = 5
    final = await watcher.wait("stream:viewers", lambda e: e["count"] == 5, within=8)
    assert final == {"roomId": room_id, "count": 5}
    await asyncio.sleep(1.2)
    counts = [e["count"] for e in watcher.events["stream:viewers"]]
    times = watcher.arrivals["stream:viewers"]
    assert counts[-1] == 5
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False)), times  # at most once a second
    assert len(counts) < 8, counts  # 12 changes, debounced
    _, got = await rest(running, "GET", f"/api/v1/rooms/{room_id}", "bob")
    assert got["viewerCount"] == 5
    await media_event(running, "subscriber_left", room_id, "", "anon-1")
    await watcher.wait("stream:viewers", lambda e: e["count"] == 4, within=3)
    for s in [watcher, *others[:3], twin]:
        await s.close()


async def test_presence_online_until_the_last_socket_closes(running: RunningApp) -> None:
    ann = await connect(running, "ann")
    ben1 = await connect(running, "ben")
    status, chat = await rest(running, "POST", "/api/v1/chats", "ann", {"userId": "ben"})
    assert status == 201
    for who in (ann, ben1):  # a direct chat both have written in makes them contacts
        assert (await who.call("chat:send", {"roomId": chat["id"], "text": "hi"}))["seq"]
    await ben1.close()
    assert (await ann.wait("presence:offline"))["userId"] == "ben"
    ben1 = await connect(running, "ben")
    assert await ann.wait("presence:online") == {"userId": "ben"}
    ben2 = await connect(running, "ben")
    _, status_now = await rest(running, "GET", "/api/v1/users/ben/presence", "ann")
    assert status_now["online"] is True
    await ben1.close()
    await asyncio.sleep(0.3)
    assert len(ann.events["presence:offline"]) == 1  # ben2 still connected
    assert len(ann.events["presence:online"]) == 1
    await ben2.close()
    offline = await ann.wait("presence:offline", lambda e: len(ann.events["presence:offline"]) == 2)
    offline = ann.events["presence:offline"][-1]
    assert offline["userId"] == "ben" and offline["lastSeen"] <= time.time()
    _, after = await rest(running, "GET", "/api/v1/users/ben/presence", "ann")
    assert after == {"userId": "ben", "online": False, "lastSeen": offline["lastSeen"]}
    stored = await running.app[AIRWAVE].db.fetchval("SELECT last_seen FROM users WHERE id = 'ben'")
    assert stored == offline["lastSeen"]
    status, err = await rest(running, "GET", "/api/v1/users/ghost/presence", "ann")
    assert (status, err["code"]) == (404, "user_not_found")
    await ann.close()
