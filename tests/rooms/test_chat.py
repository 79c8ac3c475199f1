"""Persistent chat: acks after commit, clientId retries, paging, limits, direct chats, TTL, restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from api.components import AIRWAVE
from config import Settings
from tests.conftest import RunningApp, start_app
from tests.rooms.room_clients import connect, create_room, rest


async def stored(app: RunningApp, room_id: str) -> list[dict]:
    return await app.app[AIRWAVE].db.fetch(
        "SELECT seq, user_id, text, client_id FROM chat_messages WHERE room_id = $1 ORDER BY seq", room_id
    )


async def test_send_is_acked_heard_and_a_retry_stores_once(running: RunningApp) -> None:
    room = await create_room(running, "alice")
    alice = await connect(running, "alice")
    bob = await connect(running, "bob")
    await bob.call("stream:join", {"roomId": room["id"]})
    ack = await alice.call("chat:send", {"roomId": room["id"], "text": "hello", "clientId": "c-1"})
    assert set(ack) == {"id", "seq", "createdAt"} and ack["seq"] == 1
    heard = await bob.wait("chat:message")
    assert heard == {
        "id": ack["id"], "seq": 1, "roomId": room["id"], "userId": "alice", "text": "hello",
        "createdAt": ack["createdAt"], "clientId": "c-1",
    }
    again = await alice.call("chat:send", {"roomId": room["id"], "text": "hello", "clientId": "c-1"})
    assert again == ack
    # the same clientId from someone else is their own message
    other = await bob.call("chat:send", {"roomId": room["id"], "text": "hi", "clientId": "c-1"})
    assert other["seq"] == 2
    await asyncio.sleep(0.2)
    assert [m["seq"] for m in bob.events["chat:message"]] == [1, 2]
    assert [(m["seq"], m["user_id"]) for m in await stored(running, room["id"])] == [(1, "alice"), (2, "bob")]
    await alice.close()
    await bob.close()


async def test_bad_input_gets_its_error_and_stores_nothing(running: RunningApp) -> None:
    room = await create_room(running, "alice")
    alice = await connect(running, "alice")
    bob = await connect(running, "bob")
    carol = await connect(running, "carol")
    status, direct = await rest(running, "POST", "/api/v1/chats", "alice", {"userId": "bob"})
    assert status == 201
    long_text = "x" * (running.settings.chat_max_length + 1)
    cases = [
        (alice, {"roomId": room["id"], "text": ""}, "empty_text"),
        (alice, {"roomId": room["id"], "text": "  \n "}, "empty_text"),
        (alice, {"roomId": room["id"], "text": long_text}, "text_too_long"),
        (alice, {"roomId": room["id"], "text": 42}, "bad_request"),
        (alice, {"roomId": room["id"], "text": "hi", "clientId": 7}, "bad_request"),
        (alice, "not an object", "bad_request"),
        (alice, {"roomId": "no-such-room", "text": "hi"}, "room_not_found"),
        (carol, {"roomId": direct["id"], "text": "let me in"}, "not_member"),
    ]
    for sock, data, code in cases:
        ack = await sock.call("chat:send", data)
        assert ack["error"]["code"] == code, (data, ack)
        assert ack["error"]["message"]
    # blocked: neither may message the other any more, nor open the chat again
    await running.app[AIRWAVE].social.block("bob", "alice")
    ack = await alice.call("chat:send", {"roomId": direct["id"], "text": "hey"})
    assert ack["error"]["code"] == "blocked"
    ack = await bob.call("chat:send", {"roomId": direct["id"], "text": "hey"})
    assert ack["error"]["code"] == "blocked"
    status, err = await rest(running, "POST", "/api/v1/chats", "alice", {"userId": "bob"})
    assert (status, err["code"]) == (403, "blocked")
    # the rate limit: a burst of chat_rate goes through, the next is refused
    burst = int(running.settings.chat_rate)
    acks = [await alice.call("chat:send", {"roomId": room["id"], "text": f"m{i}"}) for i in range(burst + 1)]
    assert [a.get("seq") for a in acks[:burst]] == list(range(1, burst + 1))
    assert acks[burst]["error"]["code"] == "rate_limited"
    assert [m["text"] for m in await stored(running, room["id"])] == [f"m{i}" for i in range(burst)]
    assert await stored(running, direct["id"]) == []
    db = running.app[AIRWAVE].db
    assert await db.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room["id"]) == burst
    assert await db.fetchval("SELECT last_seq FROM rooms WHERE id = $1", direct["id"]) == 0
    for s in (alice, bob, carol):
        await s.close()


async def test_paging_returns_every_message_once_both_ways(running: RunningApp) -> None:
    room = await create_room(running, "alice")
    alice = await connect(running, "alice")
    room_id = room["id"]
    running.app[AIRWAVE].services.chat.limiter.rate = 1000.0  # this test is about paging
    running.app[AIRWAVE].services.chat.limiter.burst = 1000.0
    for i in range(25):
        assert "seq" in await alice.call("chat:send", {"roomId": room_id, "text": f"m{i}"})
    forward: list[int] = []
    after = 0
    while True:
        status, page = await rest(running, "GET", f"/api/v1/rooms/{room_id}/messages?after={after}&limit=7", "bob")
        assert status == 200
        seqs = [m["seq"] for m in page["messages"]]
        assert seqs == sorted(seqs)
        if not seqs:
            break
        forward += seqs
        after = seqs[-1]
    assert forward == list(range(1, 26))
    status, newest = await rest(running, "GET", f"/api/v1/rooms/{room_id}/messages?limit=7", "bob")
    assert [m["seq"] for m in newest["messages"]] == list(range(19, 26))
    assert set(newest["messages"][0]) == {"id", "seq", "roomId", "userId", "text", "createdAt"}
    backward: list[int] = [m["seq"] for m in newest["messages"]]
    before = backward[0]
    while True:
        _, page = await rest(running, "GET", f"/api/v1/rooms/{room_id}/messages?before={before}&limit=7", "bob")
        seqs = [m["seq"] for m in page["messages"]]
        if not seqs:
            break
        assert seqs == sorted(seqs)
        backward = seqs + backward
        before = seqs[0]
    assert backward == list(range(1, 26))
    for query, code in (("limit=101", "bad_limit"), ("limit=0", "bad_limit"), ("after=x", "bad_after")):
        status, err = await rest(running, "GET", f"/api/v1/rooms/{room_id}/messages?{query}", "bob")
        assert (status, err["code"]) == (400, code)
    status, err = await rest(running, "GET", "/api/v1/rooms/nope/messages", "bob")
    assert (status, err["code"]) == (404, "room_not_found")
    await alice.close()


async def test_direct_chats_one_room_per_pair(running: RunningApp) -> None:
    ann = await connect(running, "ann")
    ben = await connect(running, "ben")
    status, first = await rest(running, "POST", "/api/v1/chats", "ann", {"userId": "ben"})
    assert status == 201 and first["type"] == "direct" and first["public"] is False
    status, same = await rest(running, "POST", "/api/v1/chats", "ben", {"userId": "ann"})
    assert status == 200 and same["id"] == first["id"]
    for body, expected in (({"userId": "ann"}, (400, "self_chat")), ({"userId": "ghost"}, (404, "user_not_found")),
                           ({}, (400, "bad_user"))):
        status, err = await rest(running, "POST", "/api/v1/chats", "ann", body)
        assert (status, err["code"]) == expected
    # chat:send with userId opens (finds) the same room; both hear it without joining
    ack = await ann.call("chat:send", {"userId": "ben", "text": "hi ben", "clientId": "x"})
    assert ack["roomId"] == first["id"] and ack["seq"] == 1
    assert (await ben.wait("chat:message"))["text"] == "hi ben"
    assert (await ann.wait("chat:message"))["id"] == ack["id"]
    status, err = await rest(running, "GET", f"/api/v1/rooms/{first['id']}/messages", "cat")
    assert (status, err["code"]) == (403, "not_member")
    await ann.close()
    await ben.close()


async def test_read_positions_typing_and_deletes(running: RunningApp) -> None:
    ann = await connect(running, "ann")
    ben = await connect(running, "ben")
    _, room = await rest(running, "POST", "/api/v1/chats", "ann", {"userId": "ben"})
    acks = [await ann.call("chat:send", {"roomId": room["id"], "text": t}) for t in ("one", "two")]
    ack = await ben.call("chat:read", {"roomId": room["id"], "upToSeq": 99})
    assert ack == {"roomId": room["id"], "upToSeq": 2}  # never past the last message
    assert await ann.wait("chat:read") == {"roomId": room["id"], "userId": "ben", "upToSeq": 2}
    assert (await ben.call("chat:read", {"roomId": room["id"], "upToSeq": 1}))["upToSeq"] == 2  # never back
    assert (await ben.call("chat:read", {"roomId": room["id"], "upToSeq": -1}))["error"]["code"] == "bad_request"
    chat = running.app[AIRWAVE].services.chat
    assert await chat.read_position(room["id"], "ben") == 2
    # typing is relayed, and turns itself off when not refreshed
    running.app[AIRWAVE].services.room_signals.typing.expires = 0.5
    started = time.monotonic()
    assert (await ann.call("chat:typing", {"roomId": room["id"], "on": True}))["on"] is True
    assert await ben.wait("chat:typing") == {"roomId": room["id"], "userId": "ann", "on": True}
    await ben.wait("chat:typing", lambda e: e["on"] is False)
    assert time.monotonic() - started >= 0.45
    assert {"roomId": room["id"], "userId": "ann", "on": True} not in ann.events["chat:typing"]  # not echoed
    # delete: only the author or the owner; everyone hears chat:deleted
    path = f"/api/v1/rooms/{room['id']}/messages/{acks[0]['id']}"
    status, err = await rest(running, "DELETE", path, "ben")
    assert (status, err["code"]) == (403, "forbidden")
    status, out = await rest(running, "DELETE", path, "ann")
    assert status == 200 and out == {"roomId": room["id"], "id": acks[0]["id"]}
    assert await ben.wait("chat:deleted") == {"roomId": room["id"], "id": acks[0]["id"]}
    _, page = await rest(running, "GET", f"/api/v1/rooms/{room['id']}/messages", "ben")
    assert [m["text"] for m in page["messages"]] == ["two"]
    await ann.close()
    await ben.close()


async def test_disappearing_messages_are_never_returned_and_swept(running: RunningApp) -> None:
    room = await create_room(running, "alice", chatTtlSeconds=1)
    keep = await create_room(running, "alice")
    alice = await connect(running, "alice")
    await alice.call("chat:send", {"roomId": room["id"], "text": "gone soon"})
    await alice.call("chat:send", {"roomId": keep["id"], "text": "kept"})
    _, page = await rest(running, "GET", f"/api/v1/rooms/{room['id']}/messages", "bob")
    assert [m["text"] for m in page["messages"]] == ["gone soon"]
    await asyncio.sleep(1.1)
    _, page = await rest(running, "GET", f"/api/v1/rooms/{room['id']}/messages", "bob")
    assert page["messages"] == []
    deadline = time.monotonic() + 5
    while await stored(running, room["id"]):
        assert time.monotonic() < deadline, "the sweeper did not delete the expired message"
        await asyncio.sleep(0.1)
    assert [m["text"] for m in await stored(running, keep["id"])] == ["kept"]
    await alice.close()


async def test_messages_survive_a_restart(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    first = await start_app(settings)
    try:
        room = await create_room(first, "alice")
        alice = await connect(first, "alice")
        acks = [await alice.call("chat:send", {"roomId": room["id"], "text": t}) for t in ("a", "b", "c")]
        await alice.close()
    finally:
        await first.server.close()
    second = await start_app(settings)
    try:
        status, page = await rest(second, "GET", f"/api/v1/rooms/{room['id']}/messages", "bob")
        assert status == 200
        assert [(m["id"], m["seq"], m["text"]) for m in page["messages"]] == [
            (a["id"], a["seq"], t) for a, t in zip(acks, "abc", strict=True)
        ]
        alice = await connect(second, "alice")
        assert (await alice.call("chat:send", {"roomId": room["id"], "text": "d"}))["seq"] == 4
        await alice.close()
    finally:
        await second.server.close()


async def test_twenty_clients_fifty_messages_each(make_settings: Callable[..., Settings]) -> None:
    app = await start_app(make_settings(chat_rate=10000))
    clients, per_client = 20, 50
    try:
        room = await create_room(app, "host")
        socks = [await connect(app, f"u{i:02d}") for i in range(clients)]
        for s in socks:
            await s.call("stream:join", {"roomId": room["id"]})

        async def send_all(i: int) -> list[int]:
            seqs = []
            for n in range(per_client):
                ack = await socks[i].call("chat:send", {"roomId": room["id"], "text": f"{i}:{n}", "clientId": f"{n}"},
                                          wait_seconds=20)
                seqs.append(ack["seq"])
            return seqs

        started = time.monotonic()
        results = await asyncio.gather(*(send_all(i) for i in range(clients)))
        total = clients * per_client
        deadline = time.monotonic() + 20
        while any(len(s.events["chat:message"]) < total for s in socks):
            assert time.monotonic() < deadline, "not every client heard every message"
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        rows = await stored(app, room["id"])
        assert [r["seq"] for r in rows] == list(range(1, total + 1))
        assert sorted(s for r in results for s in r) == list(range(1, total + 1))
        for i, seqs in enumerate(results):
            assert seqs == sorted(seqs)  # each client's own messages in its order
            mine = [r["text"] for r in rows if r["user_id"] == f"u{i:02d}"]
            assert mine == [f"{i}:{n}" for n in range(per_client)]
        for s in socks:
            heard = s.events["chat:message"]
            assert len(heard) == total and {m["seq"] for m in heard} == set(range(1, total + 1))
        assert elapsed < 25, f"1,000 messages took {elapsed:.1f}s"
        for s in socks:
            await s.close()
    finally:
        await app.server.close()
