"""Outgoing webhooks against a real receiver: signed with every secret of a
rotation, written in the transaction of their change, delivered at least once
and in order per key after the receiver was down, dead-lettered and redelivered
by an admin."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import aiohttp

from api.components import AIRWAVE
from tests.calls.call_clients import Party
from tests.conftest import RunningApp, rest
from tests.gifts.gift_clients import fund, gift, make_live_room, send_http
from tests.webhooks.receiver import Receiver


def _first_arrivals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event once, at its first arrival; a repeat must be the same event."""
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["id"] in seen:
            assert seen[event["id"]] == event, "a duplicate differs from the first delivery"
            continue
        seen[event["id"]] = event
    return list(seen.values())


async def test_down_receiver_then_gets_every_event_in_order_per_key(
    hooked: RunningApp, receiver: Receiver
) -> None:
    receiver.down = True
    await make_live_room(hooked, "stage", owner="star", stream_id="s1")
    await fund(hooked, "fan1", 100)
    await fund(hooked, "fan2", 100)
    async with aiohttp.ClientSession() as http:
        for sender, gift_id in (("fan1", "lucky"), ("fan2", "rose"), ("fan1", "crown"),
                                ("fan2", "lucky"), ("fan1", "rose")):
            status, body = await send_http(http, hooked, sender, gift(gift_id, "star", roomId="stage"))
            assert status == 200, body
    await receiver.wait_refused(2)  # tried, and tried again after a backoff
    assert receiver.events == []
    receiver.down = False

    # 2 top-ups (wallet.credited) + 5 gifts x (gift.sent, wallet.debited) + 3 creator credits
    # (a rose's creator share rounds down to 0: no earnings move, no event)
    await receiver.wait_for(15)
    events = _first_arrivals(receiver.events)
    assert len(events) == 15
    assert receiver.bad_signatures == 0
    # Both secrets of the rotation sign every delivery.
    assert all(len(header.split(",")) == 2 for header in receiver.signature_headers)

    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        assert event["version"] == 1
        by_key[event["key"]].append(event)
    assert set(by_key) == {"room:stage", "user:fan1", "user:fan2", "user:star"}
    for key, arrived in by_key.items():
        assert [e["seq"] for e in arrived] == list(range(1, len(arrived) + 1)), key

    fan1 = [(e["type"], e["data"]["amount"], e["data"]["balance"]) for e in by_key["user:fan1"]]
    assert fan1 == [("wallet.credited", 100, 100), ("wallet.debited", 7, 93),
                    ("wallet.debited", 33, 60), ("wallet.debited", 1, 59)]
    gifts = [(e["data"]["from"], e["data"]["giftId"], e["data"]["coins"]) for e in by_key["room:stage"]]
    assert gifts == [("fan1", "lucky", 7), ("fan2", "rose", 1), ("fan1", "crown", 33),
                     ("fan2", "lucky", 7), ("fan1", "rose", 1)]
    assert all(e["type"] == "gift.sent" and e["data"]["roomId"] == "stage" for e in by_key["room:stage"])
    star = [e["data"]["balance"] for e in by_key["user:star"]]
    assert star == sorted(star) and all(e["data"]["wallet"] == "earnings" for e in by_key["user:star"])

    status, figures = await rest(hooked, "GET", "/api/v1/admin/stats", "ops", admin=True)
    assert status == 200, figures
    assert figures["webhooks"]["queued"] == 0


async def test_a_refused_gift_writes_no_event(hooked: RunningApp, receiver: Receiver) -> None:
    await make_live_room(hooked, "stage", owner="star", stream_id="s1")
    await fund(hooked, "poor", 5)
    async with aiohttp.ClientSession() as http:
        status, body = await send_http(http, hooked, "poor", gift("crown", "star", roomId="stage"))
    assert (status, body["code"]) == (409, "insufficient_funds")
    await receiver.wait_for(1)
    await asyncio.sleep(0.5)  # anything written would have been sent by now
    assert [e["type"] for e in receiver.events] == ["wallet.credited"]
    rows = await hooked.app[AIRWAVE].db.fetchval("SELECT COUNT(*) FROM webhook_outbox")
    assert int(rows) == 1


async def test_a_call_to_a_user_without_a_socket_rings_by_webhook(
    hooked: RunningApp, receiver: Receiver
) -> None:
    bob = await Party(hooked, "bob").connect()  # bob exists, then his app goes to the background
    await bob.close()
    alice = await Party(hooked, "alice").connect()
    try:
        asked = time.monotonic()
        ack = await alice.call("call:initiate", {"to": "bob", "media": "audio"})
        assert "callId" in ack, ack
        await receiver.wait_for(1, "call.ringing", within=1.0)
        assert time.monotonic() - asked < 1.0
        ringing = receiver.of_type("call.ringing")[0]
        assert ringing["key"] == f"call:{ack['callId']}"
        assert ringing["data"]["calleeOnline"] is False
        assert (ringing["data"]["callerId"], ringing["data"]["calleeId"]) == ("alice", "bob")
        assert ringing["data"]["media"] == "audio"
        await alice.call("call:end", {"callId": ack["callId"]})
        await receiver.wait_for(1, "call.ended", within=5)
        done = receiver.of_type("call.ended")[0]
        assert done["data"]["reason"] == done["data"]["endReason"] == "hangup" and done["seq"] == 2
        assert (done["data"]["duration"], done["data"]["extensions"]) == (0, 0)

        bob = await Party(hooked, "bob").connect()
        ack = await alice.call("call:initiate", {"to": "bob", "media": "video"})
        await receiver.wait_for(2, "call.ringing", within=5)
        assert receiver.of_type("call.ringing")[1]["data"]["calleeOnline"] is True
        await bob.call("call:answer", {"callId": ack["callId"]})
        await receiver.wait_for(1, "call.answered", within=5)
        await bob.close()
    finally:
        await alice.close()


async def test_dead_letter_then_an_admin_redelivers(
    make_hooked_app: Any, receiver: Receiver
) -> None:
    app = await make_hooked_app(webhook_retry_for=1.5)
    receiver.down = True
    await fund(app, "fan", 10)
    db = app.app[AIRWAVE].db
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if await db.fetchval("SELECT COUNT(*) FROM webhook_outbox WHERE status = 'failed'"):
            break
        await asyncio.sleep(0.1)
    status, page = await rest(app, "GET", "/api/v1/admin/webhooks/failed", "ops", admin=True)
    assert status == 200, page
    assert [(f["type"], f["key"], f["status"]) for f in page["failed"]] == [
        ("wallet.credited", "user:fan", "failed")
    ]
    assert page["failed"][0]["lastError"] == "HTTP 503"

    # A later event of the same key is not held back by the dead letter.
    receiver.down = False
    await fund(app, "fan", 5)
    await receiver.wait_for(1)
    assert [e["data"]["balance"] for e in receiver.events] == [15]

    # Outsiders are refused; an admin redelivers.
    failed_id = page["failed"][0]["id"]
    for user, grants, expected in ((None, {}, 401), ("fan", {}, 403)):
        status, body = await rest(app, "GET", "/api/v1/admin/webhooks/failed", user, **grants)
        assert (status, body["code"]) == (expected, "missing_token" if user is None else "forbidden")
        status, body = await rest(
            app, "POST", f"/api/v1/admin/webhooks/failed/{failed_id}/redeliver", user, **grants
        )
        assert status == expected and set(body) == {"status", "code", "message", "requestId"}
    status, body = await rest(app, "POST", "/api/v1/admin/webhooks/failed/nope/redeliver", "ops", admin=True)
    assert (status, body["code"]) == (404, "delivery_not_found")
    status, body = await rest(app, "POST", f"/api/v1/admin/webhooks/failed/{failed_id}/redeliver", "ops",
                              admin=True)
    assert (status, body["status"]) == (200, "pending")
    await receiver.wait_for(2)
    assert sorted(e["data"]["balance"] for e in receiver.events) == [10, 15]
    status, page = await rest(app, "GET", "/api/v1/admin/webhooks/failed", "ops", admin=True)
    assert page["failed"] == []


async def test_delivered_events_are_kept_for_the_retention_then_deleted(
    hooked: RunningApp, receiver: Receiver
) -> None:
    await fund(hooked, "keeper", 3)
    await receiver.wait_for(1)
    airwave = hooked.app[AIRWAVE]
    dispatcher = airwave.services.webhook_dispatcher
    db = airwave.db
    for _ in range(50):  # the receiver answered; the row is marked right after
        if await db.fetchval("SELECT COUNT(*) FROM webhook_outbox WHERE status = 'delivered'"):
            break
        await asyncio.sleep(0.05)
    assert await dispatcher.sweep() == 0  # younger than the retention: kept
    await db.execute(
        "UPDATE webhook_outbox SET delivered_at = delivered_at - $1", hooked.settings.webhook_retention + 1
    )
    assert await dispatcher.sweep() == 1
    assert await db.fetchval("SELECT COUNT(*) FROM webhook_outbox") == 0
    backlog = await dispatcher.refresh_metrics()
    assert backlog == {"queued": 0, "failed": 0, "oldestAgeSeconds": 0.0}


async def test_the_suspension_hook_writes_user_suspended(hooked: RunningApp, receiver: Receiver) -> None:
    """The suspension feature calls Outbox.user_suspended in its own transaction."""
    airwave = hooked.app[AIRWAVE]
    outbox = airwave.services.outbox
    async with airwave.db.transaction() as tx:
        await outbox.user_suspended(tx, "troll", reason="spam", until=None, by="ops")
    await receiver.wait_for(1, "user.suspended", within=5)
    (event,) = receiver.of_type("user.suspended")
    assert (event["key"], event["data"]) == (
        "user:troll", {"userId": "troll", "reason": "spam", "until": None, "by": "ops"}
    )
