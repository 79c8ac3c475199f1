"""The inbox (GET/DELETE /api/v1/chats) and messages with replyTo and an attachment."""

from __future__ import annotations

import asyncio

from tests.conftest import RunningApp
from tests.rooms.room_clients import connect, rest

PHOTO = {"url": "https://cdn.example/p/1.jpg", "mime": "image/jpeg", "size": 48213}


async def test_inbox_lists_chats_newest_first_with_unread_and_the_other_party(running: RunningApp) -> None:
    alice, bob, carol = [await connect(running, u) for u in ("alice", "bob", "carol")]
    try:
        to_bob = await bob.call("chat:send", {"userId": "alice", "text": "hi alice"})
        status, group = await rest(running, "POST", "/api/v1/rooms", "alice",
                                   {"type": "group", "title": "climbers", "public": False})
        assert status == 201
        await rest(running, "POST", f"/api/v1/rooms/{group['id']}/members", "alice", {"userId": "carol"})
        await asyncio.sleep(0.01)
        first = await carol.call("chat:send", {"roomId": group["id"], "text": "rope?"})
        reply = await alice.call("chat:send", {"roomId": group["id"], "text": "", "replyTo": first["id"],
                                                "attachment": PHOTO})
        assert "error" not in reply, reply
        await asyncio.sleep(0.01)
        await carol.call("chat:send", {"userId": "alice", "text": "and you?"})
        await bob.call("chat:send", {"roomId": to_bob["roomId"], "text": "still there?"})

        status, page = await rest(running, "GET", "/api/v1/chats", "alice")
        assert status == 200, page
        summary = [(c["type"], c["otherUserId"], c["unread"], c["lastMessage"]["text"]) for c in page["chats"]]
        assert summary == [
            ("direct", "bob", 2, "still there?"),
            ("direct", "carol", 1, "and you?"),
            ("group", None, 1, ""),
        ]
        last = page["chats"][2]["lastMessage"]
        assert (last["replyTo"], last["attachment"]) == (first["id"], PHOTO)
        assert page["nextBefore"] is None

        # History carries them too.
        status, history = await rest(running, "GET", f"/api/v1/rooms/{group['id']}/messages", "carol")
        assert history["messages"][-1]["attachment"] == PHOTO

        # Reading clears the count; paging walks the list.
        await alice.call("chat:read", {"roomId": to_bob["roomId"], "upToSeq": 2})
        status, one = await rest(running, "GET", "/api/v1/chats?limit=1", "alice")
        assert [(c["otherUserId"], c["unread"]) for c in one["chats"]] == [("bob", 0)]
        status, two = await rest(running, "GET", f"/api/v1/chats?limit=2&before={one['nextBefore']}", "alice")
        assert [c["otherUserId"] for c in two["chats"]] == ["carol", None]

        # Hide a direct chat: gone until its next message. Leave the group.
        status, out = await rest(running, "DELETE", f"/api/v1/chats/{to_bob['roomId']}", "alice")
        assert (status, out["result"]) == (200, "hidden")
        status, page = await rest(running, "GET", "/api/v1/chats", "alice")
        assert [c["otherUserId"] for c in page["chats"]] == ["carol", None]
        await bob.call("chat:send", {"roomId": to_bob["roomId"], "text": "hello?"})
        status, page = await rest(running, "GET", "/api/v1/chats", "alice")
        assert [c["otherUserId"] for c in page["chats"]][0] == "bob"
        status, out = await rest(running, "DELETE", f"/api/v1/chats/{group['id']}", "carol")
        assert (status, out["result"]) == (200, "left")
        status, page = await rest(running, "GET", "/api/v1/chats", "carol")
        assert [c["type"] for c in page["chats"]] == ["direct"]
    finally:
        for client in (alice, bob, carol):
            await client.client.disconnect()


async def test_bad_replies_and_attachments_are_refused(running: RunningApp) -> None:
    alice = await connect(running, "alice")
    bob = await connect(running, "bob")
    try:
        ok = await alice.call("chat:send", {"userId": "bob", "text": "x"})
        room = ok["roomId"]
        for extra, code in (
            ({"replyTo": "m_nope"}, "bad_reply_to"),
            ({"attachment": {**PHOTO, "url": "http://insecure.example/x.jpg"}}, "bad_attachment"),
            ({"attachment": {**PHOTO, "size": -1}}, "bad_attachment"),
            ({"attachment": {**PHOTO, "mime": "not a type"}}, "bad_attachment"),
            ({"attachment": {**PHOTO, "extra": 1}}, "bad_attachment"),
        ):
            ack = await alice.call("chat:send", {"roomId": room, "text": "y", **extra})
            assert ack["error"]["code"] == code, (extra, ack)
        ack = await alice.call("chat:send", {"roomId": room, "text": ""})
        assert ack["error"]["code"] == "empty_text"
    finally:
        await alice.client.disconnect()
        await bob.client.disconnect()


async def test_outsiders_cannot_see_or_remove_a_chat(running: RunningApp) -> None:
    alice = await connect(running, "alice")
    bob = await connect(running, "bob")
    try:
        ok = await alice.call("chat:send", {"userId": "bob", "text": "private"})
    finally:
        await alice.client.disconnect()
        await bob.client.disconnect()
    status, body = await rest(running, "GET", "/api/v1/chats", None)
    assert (status, body["code"]) == (401, "missing_token")
    status, page = await rest(running, "GET", "/api/v1/chats", "mallory")
    assert (status, page["chats"]) == (200, [])
    status, body = await rest(running, "DELETE", f"/api/v1/chats/{ok['roomId']}", "mallory")
    assert (status, body["code"]) == (404, "room_not_found")
    assert set(body) == {"status", "code", "message", "requestId"}
    status, body = await rest(running, "GET", "/api/v1/chats?limit=1000", "alice")
    assert (status, body["code"]) == (422, "bad_limit")
    status, body = await rest(running, "GET", "/api/v1/chats?before=nonsense", "alice")
    assert (status, body["code"]) == (422, "bad_cursor")
