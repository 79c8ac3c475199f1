"""Ringing, answering, rejecting, cancelling, missing and busy: events and records."""

from __future__ import annotations

import asyncio
import time

from api.components import AIRWAVE
from signaling.server import call_audience
from tests.conftest import RunningApp

from .call_clients import Parties, answered, record, rest, ring


async def test_answer_then_hangup(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    before = time.time()
    ack = await alice.call("call:initiate", {"to": "bob", "media": "video"})
    assert set(ack) >= {"callId", "iceServers", "ringsUntil"} and ack["status"] == "ringing"
    assert isinstance(ack["iceServers"], list)
    assert before + 1 <= ack["ringsUntil"] <= time.time() + 1
    incoming = await bob.wait("call:incoming", ack["callId"])
    assert incoming["from"] == "alice" and incoming["media"] == "video"
    assert incoming["ringsUntil"] == ack["ringsUntil"] and isinstance(incoming["iceServers"], list)

    answer = await bob.call("call:answer", {"callId": ack["callId"]})
    assert answer["callId"] == ack["callId"] and answer["endsAt"] > time.time()
    for party in (alice, bob):
        got = await party.wait("call:answered", ack["callId"])
        assert got["endsAt"] == answer["endsAt"]
    ended = await alice.call("call:end", {"callId": ack["callId"]})
    assert ended["reason"] == "hangup"
    for party in (alice, bob):
        got = await party.wait("call:ended", ack["callId"])
        assert got["reason"] == "hangup" and 0 < got["duration"] < 3
    # the node released the call: its audience (both parties' sockets) is closed here
    rooms = call_app.app[AIRWAVE].signaling.manager.rooms.get("/", {})
    for _ in range(100):
        if call_audience(ack["callId"]) not in rooms:
            break
        await asyncio.sleep(0.02)
    assert call_audience(ack["callId"]) not in rooms

    rec = await record(call_app, ack["callId"], "bob")
    assert rec["callerId"] == "alice" and rec["calleeId"] == "bob" and rec["media"] == "video"
    assert rec["status"] == "ended" and rec["endReason"] == "hangup"
    assert rec["createdAt"] <= rec["answeredAt"] <= rec["endedAt"]
    assert abs(rec["duration"] - (rec["endedAt"] - rec["answeredAt"])) < 1e-6
    assert rec["extensions"] == 0


async def test_reject_tells_the_caller_why(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    call_id = await ring(alice, bob)
    ack = await bob.call("call:reject", {"callId": call_id, "reason": "in a meeting"})
    assert ack == {"callId": call_id, "status": "ended"}
    assert (await alice.wait("call:rejected", call_id))["reason"] == "in a meeting"
    for party in (alice, bob):
        assert (await party.wait("call:ended", call_id)) == {"callId": call_id, "reason": "rejected", "duration": 0}
    rec = await record(call_app, call_id)
    assert rec["endReason"] == "rejected" and rec["answeredAt"] is None and rec["duration"] == 0


async def test_caller_cancels_while_ringing(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    call_id = await ring(alice, bob)
    assert (await alice.call("call:end", {"callId": call_id}))["reason"] == "hangup"
    assert (await bob.wait("call:ended", call_id))["reason"] == "hangup"
    rec = await record(call_app, call_id)
    assert rec["status"] == "ended" and rec["endReason"] == "hangup" and rec["answeredAt"] is None
    # a cancelled call cannot be answered any more, and answering changes nothing
    ack = await bob.call("call:answer", {"callId": call_id})
    assert ack["error"]["code"] == "call_ended"
    assert (await record(call_app, call_id)) == rec


async def test_unanswered_call_is_missed(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    started = time.monotonic()
    call_id = await ring(alice, bob)
    for party in (alice, bob):
        assert (await party.wait("call:ended", call_id, within=3))["reason"] == "missed"
    assert 0.9 <= time.monotonic() - started < 2.5
    rec = await record(call_app, call_id)
    assert rec["endReason"] == "missed" and rec["duration"] == 0 and rec["answeredAt"] is None


async def test_calling_someone_in_a_call_is_busy(call_app: RunningApp, parties: Parties) -> None:
    alice, bob, carol = await parties("alice"), await parties("bob"), await parties("carol")
    first = await answered(alice, bob)
    ack = await carol.call("call:initiate", {"to": "bob", "media": "audio"})
    assert ack["status"] == "ended" and ack["endReason"] == "busy"
    busy = ack["callId"]
    for party in (carol, bob):
        assert (await party.wait("call:ended", busy))["reason"] == "busy"
    assert not bob.seen("call:incoming", busy)
    rec = await record(call_app, busy, "carol")
    assert rec["status"] == "ended" and rec["endReason"] == "busy" and rec["calleeId"] == "bob"
    # the first call goes on
    assert (await record(call_app, first))["status"] == "active"
    assert not alice.seen("call:ended", first)
    # and someone already in a call cannot place another one
    ack = await alice.call("call:initiate", {"to": "carol", "media": "audio"})
    assert ack["error"]["code"] == "caller_busy"


async def test_rest_call_rings_the_callee_socket(call_app: RunningApp, parties: Parties) -> None:
    bob = await parties("bob")
    status, body = await rest(call_app, "POST", "/api/v1/calls", "alice", {"to": "bob", "media": "audio"})
    assert status == 201, body
    assert body["status"] == "ringing" and body["callerId"] == "alice" and "iceServers" in body
    incoming = await bob.wait("call:incoming", body["id"])
    assert incoming["from"] == "alice" and incoming["media"] == "audio"
    assert (await bob.call("call:answer", {"callId": body["id"]}))["callId"] == body["id"]
    assert (await record(call_app, body["id"]))["status"] == "active"
    # a socket the caller connects later joins the call
    alice = await parties("alice")
    resumed = await alice.wait("call:resumed", body["id"])
    assert resumed["status"] == "active" and resumed["peerId"] == "bob"
    await alice.call("call:end", {"callId": body["id"]})
    assert (await bob.wait("call:ended", body["id"]))["reason"] == "hangup"


async def test_a_callee_connecting_while_it_rings_gets_the_call(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    call_id = await ring(alice, bob)
    phone = await parties("bob")
    incoming = await phone.wait("call:incoming", call_id)
    assert incoming["from"] == "alice"
    await phone.call("call:answer", {"callId": call_id})
    # the other device learns it was answered elsewhere
    assert (await bob.wait("call:answered", call_id))["callId"] == call_id
