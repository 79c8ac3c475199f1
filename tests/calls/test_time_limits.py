"""Warnings, timeouts, extensions and upgrades of answered calls (duration 3 s, warning 1 s, +2 s)."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import RunningApp

from .call_clients import Parties, answered, record


async def test_warning_then_timeout(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    call_id = await answered(alice, bob)
    start = time.monotonic()
    ends_at = (await record(call_app, call_id))["endsAt"]
    for party in (alice, bob):
        warning = await party.wait("call:timeout_warning", call_id, within=3)
        assert 0.8 <= warning["remaining"] <= 1.0 and warning["endsAt"] == ends_at
    assert 1.7 <= time.monotonic() - start < 2.6
    for party in (alice, bob):
        ended = await party.wait("call:ended", call_id, within=3)
        assert ended["reason"] == "timeout" and abs(ended["duration"] - 3) < 1e-6
    assert 2.8 <= time.monotonic() - start < 3.8
    rec = await record(call_app, call_id)
    assert rec["endReason"] == "timeout" and rec["endedAt"] == ends_at and rec["duration"] == 3
    assert len(alice.seen("call:timeout_warning")) == 1


async def test_both_asking_extends_the_call(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    call_id = await answered(alice, bob)
    ends_at = (await record(call_app, call_id))["endsAt"]
    # before the warning window opens, an extension cannot be asked for
    early = await alice.call("call:extend_request", {"callId": call_id})
    assert early["error"]["code"] == "extension_not_open"
    await alice.wait("call:timeout_warning", call_id, within=3)
    first = await alice.call("call:extend_request", {"callId": call_id})
    assert first["extended"] is False and first["endsAt"] == ends_at
    assert (await bob.wait("call:extend_requested", call_id))["by"] == "alice"
    second = await bob.call("call:extend_request", {"callId": call_id})
    assert second["extended"] is True and second["endsAt"] == ends_at + 2
    for party in (alice, bob):
        extended = await party.wait("call:extended", call_id)
        assert extended["endsAt"] == ends_at + 2 and extended["extensions"] == 1
    # the old deadline passes without an end; a new warning comes before the new one
    await asyncio.sleep(max(0.0, ends_at - time.time()) + 0.3)
    assert not alice.seen("call:ended", call_id)
    assert (await record(call_app, call_id))["status"] == "active"
    await _wait_count(alice, "call:timeout_warning", call_id, 2, within=2)
    ended = await bob.wait("call:ended", call_id, within=3)
    assert ended["reason"] == "timeout" and abs(ended["duration"] - 5) < 1e-6
    rec = await record(call_app, call_id)
    assert rec["extensions"] == 1 and rec["endsAt"] == ends_at + 2 and rec["endedAt"] == ends_at + 2


async def test_one_sided_extension_changes_nothing(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    call_id = await answered(alice, bob)
    ends_at = (await record(call_app, call_id))["endsAt"]
    await bob.wait("call:timeout_warning", call_id, within=3)
    for _ in range(2):  # asking twice is still one party
        ack = await bob.call("call:extend_request", {"callId": call_id})
        assert ack["extended"] is False
    assert (await alice.wait("call:extend_requested", call_id))["by"] == "bob"
    ended = await alice.wait("call:ended", call_id, within=3)
    assert ended["reason"] == "timeout" and abs(ended["duration"] - 3) < 1e-6
    assert not alice.seen("call:extended")
    rec = await record(call_app, call_id)
    assert rec["extensions"] == 0 and rec["endsAt"] == ends_at


async def test_extension_limit(make_call_app, backend: str) -> None:  # type: ignore[no-untyped-def]
    app = await make_call_app(call_max_extensions=0)
    group = Parties(app)
    try:
        alice, bob = await group("alice"), await group("bob")
        call_id = await answered(alice, bob)
        await alice.wait("call:timeout_warning", call_id, within=3)
        ack = await alice.call("call:extend_request", {"callId": call_id})
        assert ack["error"]["code"] == "extension_limit"
        assert not bob.seen("call:extend_requested")
    finally:
        await group.close()


async def test_unlimited_calls_have_no_warning_and_no_timeout(make_call_app, backend: str) -> None:  # type: ignore[no-untyped-def]
    app = await make_call_app(call_duration=0)
    group = Parties(app)
    try:
        alice, bob = await group("alice"), await group("bob")
        call_id = await answered(alice, bob)
        assert (await record(app, call_id))["endsAt"] is None
        ack = await alice.call("call:extend_request", {"callId": call_id})
        assert ack["error"]["code"] == "unlimited_call"
        await asyncio.sleep(3.3)
        assert not alice.seen("call:timeout_warning") and not alice.seen("call:ended")
        assert (await record(app, call_id))["status"] == "active"
    finally:
        await group.close()


async def test_upgrade_audio_to_video_when_both_agree(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    call_id = await answered(alice, bob, media="audio")
    first = await alice.call("call:upgrade_request", {"callId": call_id})
    assert first == {"callId": call_id, "upgraded": False, "media": "audio"}
    assert (await bob.wait("call:upgrade_requested", call_id))["by"] == "alice"
    assert (await record(call_app, call_id))["media"] == "audio"
    second = await bob.call("call:upgrade_request", {"callId": call_id})
    assert second == {"callId": call_id, "upgraded": True, "media": "video"}
    for party in (alice, bob):
        assert (await party.wait("call:upgraded", call_id))["media"] == "video"
    rec = await record(call_app, call_id)
    assert rec["media"] == "video" and rec["upgradedAt"] is not None
    again = await alice.call("call:upgrade_request", {"callId": call_id})
    assert again["error"]["code"] == "already_video"


async def test_upgrade_needs_an_answered_audio_call(call_app: RunningApp, parties: Parties) -> None:
    alice, bob = await parties("alice"), await parties("bob")
    ack = await alice.call("call:initiate", {"to": "bob", "media": "audio"})
    ringing = await alice.call("call:upgrade_request", {"callId": ack["callId"]})
    assert ringing["error"]["code"] == "not_active"
    await alice.call("call:end", {"callId": ack["callId"]})
    video = await answered(alice, bob, media="video")
    assert (await bob.call("call:upgrade_request", {"callId": video}))["error"]["code"] == "already_video"


async def _wait_count(party, event: str, call_id: str, count: int, within: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while len(party.seen(event, call_id)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {event}: {party.events!r}"
        await asyncio.sleep(0.02)
