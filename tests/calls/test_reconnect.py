"""A party whose connection drops has reconnect_grace (1 s here) to come back."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import RunningApp

from .call_clients import Parties, answered, record


async def test_a_new_socket_within_grace_resumes_the_call(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    call_id = await answered(alice, bob)
    ends_at = (await record(call_app, call_id))["endsAt"]
    await bob.close()
    await asyncio.sleep(0.4)
    bob_again = await parties("bob")
    resumed = await bob_again.wait("call:resumed", call_id)
    assert resumed["status"] == "active" and resumed["peerId"] == "alice" and resumed["endsAt"] == ends_at
    assert resumed["media"] == "video" and isinstance(resumed["iceServers"], list)
    assert resumed["mediaConnected"] is False  # no media session was ever made
    await asyncio.sleep(1.0)  # past the grace the first socket had
    assert (await record(call_app, call_id))["status"] == "active"
    assert not alice.seen("call:ended", call_id)
    # the resumed socket is in the call: it gets the call's events and can act on it
    assert (await bob_again.wait("call:timeout_warning", call_id, within=2))["endsAt"] == ends_at
    assert (await bob_again.call("call:end", {"callId": call_id}))["reason"] == "hangup"
    assert (await alice.wait("call:ended", call_id))["reason"] == "hangup"


async def test_gone_past_grace_ends_the_call_as_disconnected(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    call_id = await answered(alice, bob)
    await bob.close()
    gone = time.monotonic()
    ended = await alice.wait("call:ended", call_id, within=3)
    assert ended["reason"] == "disconnected" and 0.9 <= time.monotonic() - gone < 2
    rec = await record(call_app, call_id)
    assert rec["endReason"] == "disconnected" and 0 < rec["duration"] < 2
    # coming back after the end resumes nothing
    bob_again = await parties("bob")
    await asyncio.sleep(0.3)
    assert not bob_again.seen("call:resumed")


async def test_a_caller_gone_while_ringing_ends_the_call(make_call_app, backend: str) -> None:  # type: ignore[no-untyped-def]
    app = await make_call_app(ring_timeout=5)
    group = Parties(app)
    try:
        alice, bob = await group("alice"), await group("bob")
        ack = await alice.call("call:initiate", {"to": "bob", "media": "audio"})
        await bob.wait("call:incoming", ack["callId"])
        await alice.close()
        assert (await bob.wait("call:ended", ack["callId"], within=3))["reason"] == "disconnected"
    finally:
        await group.close()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_server_shutdown_ends_calls(make_call_app, backend: str) -> None:  # type: ignore[no-untyped-def]
    """The only node stops: every live call ends as server_shutdown."""
    app = await make_call_app()
    group = Parties(app)
    try:
        alice, bob = await group("alice"), await group("bob")
        call_id = await answered(alice, bob)
        # Engine.IO's shutdown leaves sockets open until their ping times out
        # (45 s): the clients leave once they have heard the end.
        closing = asyncio.create_task(app.server.close())
        for party in (alice, bob):
            ended = await party.wait("call:ended", call_id, within=3)
            assert ended["reason"] == "server_shutdown" and ended["duration"] > 0
        for party in (alice, bob):
            await party.abort()
        await asyncio.wait_for(closing, 10)
    finally:
        await group.close()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_stopping_node_leaves_calls_whose_media_it_does_not_hold(  # type: ignore[no-untyped-def]
    make_call_app, backend: str
) -> None:
    """With Redis, other nodes carry on: a call without media on the stopping
    node is not ended (its parties reconnect elsewhere; its timers are in Redis)."""
    app = await make_call_app(reconnect_grace=30, call_duration=60)
    group = Parties(app)
    try:
        alice, bob = await group("alice"), await group("bob")
        call_id = await answered(alice, bob)
        # Both parties' sockets are on this node while it stops.
        await asyncio.wait_for(app.server.close(), 15)
        row = await _call_row(app, call_id)
        assert row["status"] == "active" and row["end_reason"] is None, row
    finally:
        await group.close()


async def _call_row(app, call_id: str) -> dict:  # type: ignore[no-untyped-def]
    """Read the record straight from the store: the app itself is closed."""
    from store import Database

    db = await Database.connect(app.settings)
    try:
        return await db.fetchrow("SELECT status, end_reason FROM calls WHERE id = $1", call_id)
    finally:
        await db.close()
