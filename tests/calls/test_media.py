"""Call media through the SFU: aiortc parties on loopback, each decoding the other's video."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import wait_for

from .call_clients import Parties, answered, rest
from .call_media import CallPeer


@pytest.fixture(scope="module")
def alice_frames():
    return encoded_vp8(60, seed=1)


@pytest.fixture(scope="module")
def bob_frames():
    return encoded_vp8(60, seed=2)


async def _media_both_ways(alice: CallPeer, bob: CallPeer) -> None:
    await wait_for(lambda: len(alice.frames) >= 10 and len(bob.frames) >= 10, 10)
    # forwarded as they were encoded: each receives only the other's frames
    assert set(bob.frames) <= set(alice.track.sent)
    assert set(alice.frames) <= set(bob.track.sent)
    assert not set(alice.frames) & set(bob.frames)
    for peer in (alice, bob):
        frame = await peer.decoded_frame()
        assert (frame.width, frame.height) == (320, 240)


async def test_answered_call_carries_media_both_ways(
    make_call_app, alice_frames, bob_frames  # type: ignore[no-untyped-def]
) -> None:
    app: RunningApp = await make_call_app(call_duration=20)
    engine = app.app[AIRWAVE].media
    group = Parties(app)
    alice_party, bob_party = await group("alice"), await group("bob")
    call_id = await answered(alice_party, bob_party)
    alice, bob = CallPeer(alice_party, call_id, alice_frames), CallPeer(bob_party, call_id, bob_frames)
    try:
        setups = REGISTRY.get_sample_value("airwave_calls_setup_seconds_count") or 0.0
        first = await alice.join()
        # nobody to receive from yet: the answer announces the track alice will get
        assert "a=sendrecv" in first["sdp"] and "a=ssrc:" in first["sdp"]
        assert "a=recvonly" not in first["sdp"]
        second = await bob.join()
        assert "a=sendrecv" in second["sdp"]  # alice's video at once
        await _media_both_ways(alice, bob)
        assert alice.offers_answered == 0 and bob.offers_answered == 0  # no renegotiation
        assert engine.session_count == 2
        # the set-up is timed once, when both parties' media is connected
        await wait_for(lambda: REGISTRY.get_sample_value("airwave_calls_setup_seconds_count") == setups + 1, 5)
        # another socket of alice's (a reloaded tab) learns that her media still flows
        alice_again = await group("alice")
        assert (await alice_again.wait("call:resumed", call_id))["mediaConnected"] is True
        # the call's SFU room is no room: no room row, no stream, no room.started
        # (every call was a public live room while it lasted)
        db = app.app[AIRWAVE].db
        assert await db.fetchval("SELECT count(*) FROM rooms WHERE id LIKE 'call/%'") == 0
        status, live = await rest(app, "GET", "/api/v1/rooms?status=live", "alice")
        assert status == 200 and "call/" not in str(live), live

        await alice_party.call("call:end", {"callId": call_id})
        await wait_for(lambda: engine.session_count == 0, 5)
        bad = await bob_party.call("call:sdp_offer", {"callId": call_id, "sdp": "v=0"})
        assert bad["error"]["code"] == "call_ended"
    finally:
        await alice.close()
        await bob.close()
        await group.close()


async def test_audio_call_sends_video_only_after_upgrade(
    make_call_app, alice_frames, bob_frames  # type: ignore[no-untyped-def]
) -> None:
    app: RunningApp = await make_call_app(call_duration=20)
    engine = app.app[AIRWAVE].media
    group = Parties(app)
    alice_party, bob_party = await group("alice"), await group("bob")
    call_id = await answered(alice_party, bob_party, media="audio")
    alice, bob = CallPeer(alice_party, call_id, alice_frames), CallPeer(bob_party, call_id, bob_frames)
    try:
        await alice.pc.setLocalDescription(await alice.pc.createOffer())
        refused = await alice_party.call("call:sdp_offer", {"callId": call_id, "sdp": alice.pc.localDescription.sdp})
        assert refused["error"]["code"] == "video_not_allowed"
        assert engine.session_count == 0
        await alice.close()

        await alice_party.call("call:upgrade_request", {"callId": call_id})
        await bob_party.call("call:upgrade_request", {"callId": call_id})
        await alice_party.wait("call:upgraded", call_id)
        alice = CallPeer(alice_party, call_id, alice_frames)
        await alice.join()
        await bob.join()
        await _media_both_ways(alice, bob)
        assert alice.offers_answered == 0
    finally:
        await alice.close()
        await bob.close()
        await group.close()
    await wait_for(lambda: engine.session_count == 0, 5)
