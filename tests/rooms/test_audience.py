"""One audience rule for a room at every door: private rooms, blocks and bans refuse
WHEP, sfu:subscribe, stream:join, chat (history, send, typing), gifts, the leaderboard
and the participants list alike (issue 15.2)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.gifts.gift_clients import gift
from tests.rooms.room_clients import connect, create_room, rest
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, Viewer

SDP = "application/sdp"


@pytest.fixture(scope="module")
def vp8() -> list:
    return encoded_vp8(30)


async def _post_sdp(app: RunningApp, path: str, offer: str, token: str) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": SDP}
    async with aiohttp.ClientSession() as http:
        async with http.post(app.url + path, data=offer, headers=headers) as r:
            text = await r.text()
            return r.status, (await r.json() if r.content_type == "application/json" else None), text


async def _go_live(app: RunningApp, room_id: str, owner: str, vp8: list) -> Publisher:
    publisher = Publisher([PacketTrack("video", vp8)])
    status, _, answer = await _post_sdp(
        app, f"/whip/{room_id}", await publisher.offer(), app.token(owner, room=room_id, publish=True)
    )
    assert status == 201, answer
    await publisher.accept(answer)
    return publisher


async def _refused_everywhere(app: RunningApp, room_id: str, owner: str, outsider: str, code: str) -> None:
    """Every door refuses ``outsider`` (who holds subscribe on every room) with ``code``."""
    viewer = Viewer(("video",))
    status, body, _ = await _post_sdp(
        app, f"/whep/{room_id}", await viewer.offer(), app.token(outsider, room="*", subscribe=True)
    )
    assert (status, body["code"]) == (403, code), body
    assert set(body) == {"status", "code", "message", "requestId"}
    socket = await connect(app, outsider, room="*", subscribe=True)
    try:
        for event, data in (
            ("sfu:subscribe", {"roomId": room_id, "sdp": await viewer.offer()}),
            ("stream:join", {"roomId": room_id}),
            ("chat:send", {"roomId": room_id, "text": "let me in"}),
            ("chat:typing", {"roomId": room_id, "on": True}),
            ("gift:send", gift("rose", owner, roomId=room_id)),
        ):
            ack = await socket.call(event, data)
            assert ack["error"]["code"] == code, (event, ack)
    finally:
        await socket.close()
    await viewer.close()
    for method, path, body_json, expected in (
        ("GET", f"/api/v1/rooms/{room_id}/messages", None, 403),
        ("GET", f"/api/v1/rooms/{room_id}/leaderboard", None, 403),
        ("POST", "/api/v1/gifts/send", gift("rose", owner, roomId=room_id), 403),
        ("GET", f"/api/v1/rooms/{room_id}/participants", None, 404),
        ("GET", f"/api/v1/rooms/{room_id}", None, 404),
    ):
        status, answer = await rest(app, method, path, outsider, body_json)
        assert status == expected, (path, answer)
        assert answer["code"] in (code, "room_not_found"), (path, answer)


async def test_a_private_live_room_is_closed_to_non_members_at_every_door(running: RunningApp, vp8) -> None:
    room = await create_room(running, "alice", public=False)
    publisher = await _go_live(running, room["id"], "alice", vp8)
    try:
        await _refused_everywhere(running, room["id"], "alice", "bob", "not_member")
        # the door is the audience rule, not a broken room: an admin is let in
        viewer = Viewer(("video",))
        status, _, answer = await _post_sdp(
            running, f"/whep/{room['id']}", await viewer.offer(), running.token("root", admin=True)
        )
        assert status == 201, answer
        await viewer.close()
    finally:
        await publisher.close()


async def test_a_user_the_owner_blocked_is_kept_out_of_a_public_room(running: RunningApp, vp8) -> None:
    room = await create_room(running, "alice", public=True)
    status, _ = await rest(running, "POST", "/api/v1/users/dave/block", "alice")
    assert status == 200
    publisher = await _go_live(running, room["id"], "alice", vp8)
    try:
        await _refused_everywhere(running, room["id"], "alice", "dave", "blocked")
        # anyone else still watches the public room
        viewer = Viewer(("video",))
        status, _, answer = await _post_sdp(
            running, f"/whep/{room['id']}", await viewer.offer(), running.token("erin", room="*", subscribe=True)
        )
        assert status == 201, answer
        await viewer.close()
    finally:
        await publisher.close()


async def test_only_the_owner_or_a_token_naming_the_room_publishes(running: RunningApp, vp8) -> None:
    """Issue 15.3: a wildcard publish grant neither streams into another's room nor squats an id."""
    room = await create_room(running, "alice", public=False)
    wildcard = running.token("mallory", room="*", publish=True, subscribe=True)
    publisher = Publisher([PacketTrack("video", vp8)])
    offer = await publisher.offer()
    status, body, _ = await _post_sdp(running, f"/whip/{room['id']}", offer, wildcard)
    assert (status, body["code"]) == (403, "not_owner")
    status, body, _ = await _post_sdp(running, "/whip/nobodys-room", offer, wildcard)
    assert (status, body["code"]) == (404, "room_not_found")
    socket = await connect(running, "mallory", room="*", publish=True)
    try:
        ack = await socket.call("sfu:publish", {"roomId": room["id"], "sdp": offer})
        assert ack["error"]["code"] == "not_owner"
        ack = await socket.call("sfu:publish", {"roomId": "nobodys-room", "sdp": offer})
        assert ack["error"]["code"] == "room_not_found"
    finally:
        await socket.close()
    await publisher.close()
    status, _ = await rest(running, "GET", "/api/v1/rooms/nobodys-room", "root", admin=True)
    assert status == 404  # nothing was created
    # the owner with a wildcard grant publishes into her room
    owner = Publisher([PacketTrack("video", vp8)])
    status, _, answer = await _post_sdp(
        running, f"/whip/{room['id']}", await owner.offer(), running.token("alice", room="*", publish=True)
    )
    assert status == 201, answer
    await owner.close()
    # a token naming an unknown room id creates it for its holder
    fresh = await _go_live(running, "mallory-show", "mallory", vp8)
    try:
        for _ in range(100):
            status, made = await rest(running, "GET", "/api/v1/rooms/mallory-show", "mallory")
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert made["ownerId"] == "mallory"
    finally:
        await fresh.close()


async def test_presence_only_for_contacts_and_never_across_a_block(running: RunningApp) -> None:
    """Issue 15.4: strangers, unsolicited chats and blocked users learn nothing of presence."""
    gus = await connect(running, "gus")
    stalker = await connect(running, "stalker")
    friend = await connect(running, "friend")
    try:
        status, err = await rest(running, "GET", "/api/v1/users/gus/presence", "stalker")
        assert (status, err["code"]) == (404, "user_not_found")
        # an unsolicited direct chat (written in by one side only) makes no contact
        status, dm = await rest(running, "POST", "/api/v1/chats", "stalker", {"userId": "gus"})
        assert status == 201
        assert (await stalker.call("chat:send", {"roomId": dm["id"], "text": "hey"}))["seq"] == 1
        status, _ = await rest(running, "GET", "/api/v1/users/gus/presence", "stalker")
        assert status == 404
        # a match is a relation; a block ends it
        db = running.app[AIRWAVE].db
        await db.execute("INSERT INTO matches (user_a, user_b, created_at) VALUES ('friend', 'gus', 0)")
        status, seen = await rest(running, "GET", "/api/v1/users/gus/presence", "friend")
        assert status == 200 and seen["online"] is True
        await gus.close()
        assert (await friend.wait("presence:offline"))["userId"] == "gus"
        status, _ = await rest(running, "POST", "/api/v1/users/friend/block", "gus")
        assert status == 200
        gus = await connect(running, "gus")
        status, _ = await rest(running, "GET", "/api/v1/users/gus/presence", "friend")
        assert status == 404
        await asyncio.sleep(0.3)
        assert friend.events["presence:online"] == []
        assert stalker.events["presence:online"] == [] and stalker.events["presence:offline"] == []
    finally:
        for socket in (gus, stalker, friend):
            await socket.close()
