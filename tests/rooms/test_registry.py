"""The room registry over REST: create, get, list, patch, end, kick, members, participants."""

from __future__ import annotations

import asyncio

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.rooms.room_clients import connect, create_room, rest


async def go_live(app: RunningApp, room_id: str, user: str) -> None:
    """What api/media.py announces when a publisher's media connects."""
    await app.app[AIRWAVE].bus.publish(
        "media", {"type": "publisher_started", "roomId": room_id, "sessionId": "s-" + room_id, "userId": user},
        local=True,
    )


async def test_create_get_patch_and_validation(running: RunningApp) -> None:
    room = await create_room(running, "alice", title="Sunday show", public=True, maxViewers=10, chatTtlSeconds=60)
    assert room["type"] == "live" and room["status"] == "idle" and room["ownerId"] == "alice"
    assert room["viewerCount"] == 0 and room["maxViewers"] == 10 and room["chatTtlSeconds"] == 60
    status, got = await rest(running, "GET", f"/api/v1/rooms/{room['id']}", "bob")
    assert status == 200 and got["title"] == "Sunday show"

    for body, code in (
        ({"type": "direct"}, "bad_type"),
        ({"type": "live", "title": 5}, "bad_title"),
        ({"type": "live", "maxViewers": 0}, "bad_max_viewers"),
        ({"type": "live", "chatTtlSeconds": -1}, "bad_chat_ttl"),
        ({"type": "live", "public": "yes"}, "bad_public"),
    ):
        status, err = await rest(running, "POST", "/api/v1/rooms", "alice", body)
        assert (status, err["code"]) == (400, code), body
    status, err = await rest(running, "POST", "/api/v1/rooms", None, {"type": "live"})
    assert status == 401
    status, err = await rest(running, "GET", "/api/v1/rooms/nope", "bob")
    assert (status, err["code"]) == (404, "room_not_found")

    status, err = await rest(running, "PATCH", f"/api/v1/rooms/{room['id']}", "bob", {"title": "mine"})
    assert (status, err["code"]) == (403, "forbidden")
    status, patched = await rest(
        running, "PATCH", f"/api/v1/rooms/{room['id']}", "alice", {"title": "Monday", "public": False}
    )
    assert status == 200 and patched["title"] == "Monday" and patched["public"] is False
    # a private live room is not shown to others
    status, _ = await rest(running, "GET", f"/api/v1/rooms/{room['id']}", "bob")
    assert status == 404


async def test_live_rooms_listed_by_viewers_with_cursor(running: RunningApp) -> None:
    rooms = [await create_room(running, f"host{i}") for i in range(3)]
    for i, room in enumerate(rooms):
        await go_live(running, room["id"], f"host{i}")
    await create_room(running, "idle-host")  # never live: not listed
    watchers = []
    for n, room in ((2, rooms[1]), (1, rooms[2])):
        for v in range(n):
            w = await connect(running, f"viewer{v}")
            assert (await w.call("stream:join", {"roomId": room["id"]}))["viewerCount"] == v + 1
            watchers.append(w)
    status, page = await rest(running, "GET", "/api/v1/rooms?status=live&limit=2", "bob")
    assert status == 200
    assert [(r["id"], r["viewerCount"], r["status"]) for r in page["rooms"]] == [
        (rooms[1]["id"], 2, "live"), (rooms[2]["id"], 1, "live")
    ]
    status, rest_page = await rest(running, "GET", f"/api/v1/rooms?status=live&limit=2&cursor={page['nextCursor']}")
    assert [r["id"] for r in rest_page["rooms"]] == [rooms[0]["id"]] and rest_page["nextCursor"] is None
    status, err = await rest(running, "GET", "/api/v1/rooms?status=weird")
    assert (status, err["code"]) == (400, "bad_status")
    for w in watchers:
        await w.close()


async def test_owner_ends_room_audience_told_and_removed(running: RunningApp) -> None:
    room = await create_room(running, "alice")
    await go_live(running, room["id"], "alice")
    bob = await connect(running, "bob")
    await bob.call("stream:join", {"roomId": room["id"]})
    status, err = await rest(running, "POST", f"/api/v1/rooms/{room['id']}/end", "bob")
    assert (status, err["code"]) == (403, "forbidden")
    status, ended = await rest(running, "POST", f"/api/v1/rooms/{room['id']}/end", "alice")
    assert status == 200 and ended["status"] == "ended" and ended["viewerCount"] == 0
    got = await bob.wait("stream:ended")
    assert got == {"roomId": room["id"], "reason": "ended_by_owner"}
    # bob is out of the audience: chat in the room no longer reaches him
    carol = await connect(running, "carol")
    await carol.call("chat:send", {"roomId": room["id"], "text": "anyone?"})
    await asyncio.sleep(0.3)
    assert bob.events["chat:message"] == []
    ack = await bob.call("stream:join", {"roomId": room["id"]})
    assert ack["error"]["code"] == "room_ended"
    # an admin may end any room
    other = await create_room(running, "dave")
    status, _ = await rest(running, "POST", f"/api/v1/rooms/{other['id']}/end", "root", admin=True)
    assert status == 200
    await bob.close()
    await carol.close()


async def test_kick_removes_bans_and_is_stored(running: RunningApp) -> None:
    room = await create_room(running, "alice")
    await go_live(running, room["id"], "alice")
    bob = await connect(running, "bob")
    carol = await connect(running, "carol")
    for s in (bob, carol):
        await s.call("stream:join", {"roomId": room["id"]})
    status, err = await rest(running, "POST", f"/api/v1/rooms/{room['id']}/kick", "carol", {"userId": "bob"})
    assert (status, err["code"]) == (403, "forbidden")
    status, err = await rest(running, "POST", f"/api/v1/rooms/{room['id']}/kick", "alice", {"userId": "alice"})
    assert (status, err["code"]) == (400, "cannot_kick_owner")
    status, kicked = await rest(running, "POST", f"/api/v1/rooms/{room['id']}/kick", "alice", {"userId": "bob"})
    assert status == 200 and kicked["userId"] == "bob"
    assert (await bob.wait("stream:kicked"))["roomId"] == room["id"]
    assert (await bob.call("stream:join", {"roomId": room["id"]}))["error"]["code"] == "banned"
    assert (await bob.call("chat:send", {"roomId": room["id"], "text": "let me in"}))["error"]["code"] == "banned"
    db = running.app[AIRWAVE].db
    until = await db.fetchval("SELECT banned_until FROM room_bans WHERE room_id = $1 AND user_id = 'bob'", room["id"])
    assert until == kicked["bannedUntil"]
    status, people = await rest(running, "GET", f"/api/v1/rooms/{room['id']}/participants", "alice")
    assert people["participants"] == [{"userId": "alice", "role": "owner"}, {"userId": "carol", "role": "viewer"}]
    await carol.wait("stream:viewers", lambda e: e["count"] == 1)
    await bob.close()
    await carol.close()


async def test_group_members_only(running: RunningApp) -> None:
    status, group = await rest(running, "POST", "/api/v1/rooms", "alice", {"type": "group", "title": "g", "public": False})
    assert status == 201
    bob = await connect(running, "bob")
    ack = await bob.call("chat:send", {"roomId": group["id"], "text": "hi"})
    assert ack["error"]["code"] == "not_member"
    status, err = await rest(running, "POST", f"/api/v1/rooms/{group['id']}/members", "bob", {"userId": "bob"})
    assert (status, err["code"]) == (403, "forbidden")
    status, _ = await rest(running, "POST", f"/api/v1/rooms/{group['id']}/members", "alice", {"userId": "bob"})
    assert status == 200
    alice = await connect(running, "alice")
    ack = await bob.call("chat:send", {"roomId": group["id"], "text": "hi"})
    assert ack["seq"] == 1
    assert (await alice.wait("chat:message"))["text"] == "hi"  # members hear without joining
    status, people = await rest(running, "GET", f"/api/v1/rooms/{group['id']}/participants", "bob")
    assert {p["userId"] for p in people["participants"]} == {"alice", "bob"}
    status, out = await rest(running, "DELETE", f"/api/v1/rooms/{group['id']}/members/bob", "bob")
    assert status == 200 and out["removed"] is True
    ack = await bob.call("chat:send", {"roomId": group["id"], "text": "again"})
    assert ack["error"]["code"] == "not_member"
    await alice.close()
    await bob.close()
