"""Webhook events of facts that are no transaction of ours (the media engine's
publisher, a live room's start and end, seen on the bus by every node) and of
direct messages to users with no live socket."""

from __future__ import annotations

import asyncio
from typing import Any

from api.components import AIRWAVE
from tests.calls.call_clients import Party
from tests.conftest import RunningApp
from tests.webhooks.receiver import Receiver


async def _media(app: RunningApp, kind: str, session: str, user: str, room: str = "stage",
                 **extra: Any) -> None:
    """What api/media.py announce() puts on the node-local media channel."""
    event = {"type": kind, "roomId": room, "sessionId": session, "userId": user, **extra}
    await app.app[AIRWAVE].bus.publish("media", event, local=True)


async def test_a_live_room_starts_and_ends_with_its_peak_viewers(
    make_hooked_app: Any, receiver: Receiver
) -> None:
    app = await make_hooked_app(room_publisher_grace=0)
    announced: list[int] = []

    async def viewers(event: dict[str, Any]) -> None:
        if event.get("type") == "viewers_changed":
            announced.append(int(event["count"]))

    app.app[AIRWAVE].bus.subscribe("rooms", viewers)
    await _media(app, "publisher_started", "pub1", "star")
    await receiver.wait_for(1, "room.started", within=5)
    for n in range(3):
        await _media(app, "subscriber_joined", f"sub{n}", f"viewer{n}")
    for _ in range(100):
        if announced and announced[-1] == 3:
            break
        await asyncio.sleep(0.05)
    assert announced[-1] == 3
    await _media(app, "subscriber_left", "sub0", "viewer0", reason="closed")
    await _media(app, "publisher_ended", "pub1", "star", reason="closed")
    await receiver.wait_for(1, "room.ended", within=5)

    events = [e for e in receiver.events if e["key"] == "room:stage"]
    # The media channel's fact first, then what the room registry made of it.
    assert [e["type"] for e in events] == ["publisher.joined", "room.started", "publisher.left", "room.ended"]
    started = receiver.of_type("room.started")[0]["data"]
    ended = receiver.of_type("room.ended")[0]["data"]
    assert started["roomId"] == "stage" and started["ownerId"] == "star"
    assert ended["streamId"] == started["streamId"]
    assert (ended["reason"], ended["peakViewers"]) == ("publisher_gone", 3)
    assert ended["duration"] >= 0
    assert receiver.of_type("publisher.left")[0]["data"]["reason"] == "closed"
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


async def test_a_call_partys_media_is_no_publisher_event(make_hooked_app: Any, receiver: Receiver) -> None:
    """A call's media room (call/<callId>) is no room of the app's: its parties' media
    makes no publisher.* webhook (the call.* events tell the call's story)."""
    app = await make_hooked_app(room_publisher_grace=0)
    await _media(app, "publisher_started", "party1", "alice", room="call/c1")
    await _media(app, "publisher_ended", "party1", "alice", room="call/c1", reason="closed")
    await _media(app, "publisher_started", "pub1", "star")  # a room's, after them
    await receiver.wait_for(1, "publisher.joined", within=5)
    await asyncio.sleep(0.2)
    assert [(e["type"], e["key"]) for e in receiver.events if e["type"].startswith("publisher.")] == [
        ("publisher.joined", "room:stage")]


async def test_a_direct_message_to_a_user_without_a_socket(
    make_hooked_app: Any, receiver: Receiver
) -> None:
    app = await make_hooked_app(webhook_chat_text=True)
    bob = await Party(app, "bob").connect()
    await bob.close()
    alice = await Party(app, "alice").connect()
    try:
        ack = await alice.call("chat:send", {"userId": "bob", "text": "hi bob", "clientId": "c1"})
        assert "roomId" in ack, ack
        await receiver.wait_for(1, "chat.message", within=5)
        message = receiver.of_type("chat.message")[0]
        assert message["key"] == f"room:{ack['roomId']}"
        assert message["data"] == {
            "messageId": ack["id"], "roomId": ack["roomId"], "seq": 1, "from": "alice", "to": "bob",
            "createdAt": ack["createdAt"], "hasAttachment": False, "text": "hi bob",
        }
        bob = await Party(app, "bob").connect()  # online now: no push needed, no event
        await alice.call("chat:send", {"roomId": ack["roomId"], "text": "there you are"})
        await bob.wait("chat:message")
        await bob.close()
        await asyncio.sleep(0.3)
        await alice.call("chat:send", {"roomId": ack["roomId"], "text": "gone again"})
        await receiver.wait_for(2, "chat.message", within=5)
        assert [m["data"]["seq"] for m in receiver.of_type("chat.message")] == [1, 3]
    finally:
        await alice.close()


async def test_chat_text_is_left_out_unless_turned_on(hooked: RunningApp, receiver: Receiver) -> None:
    bob = await Party(hooked, "bob").connect()
    await bob.close()
    alice = await Party(hooked, "alice").connect()
    try:
        ack = await alice.call("chat:send", {"userId": "bob", "text": "secret"})
        assert "id" in ack, ack
        await receiver.wait_for(1, "chat.message", within=5)
        assert "text" not in receiver.of_type("chat.message")[0]["data"]
    finally:
        await alice.close()
