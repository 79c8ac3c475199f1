"""A call party's network changes: it restarts ICE through renegotiation
(``call:sdp_offer`` with new credentials) and the call, its session and its
DTLS association survive."""

from __future__ import annotations

import pytest
from aiortc import RTCSessionDescription

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import wait_for
from tests.sfu.sfu_restart import ClientRestart, answer_parameters, nominated_pair

from .call_clients import Parties, answered, record
from .call_media import CallPeer


@pytest.fixture(scope="module")
def alice_frames():
    return encoded_vp8(60, seed=1)


@pytest.fixture(scope="module")
def bob_frames():
    return encoded_vp8(60, seed=2)


async def test_call_party_restarts_ice_and_the_call_goes_on(
    make_call_app, alice_frames, bob_frames  # type: ignore[no-untyped-def]
) -> None:
    app: RunningApp = await make_call_app(call_duration=30)
    engine = app.app[AIRWAVE].media
    group = Parties(app)
    alice_party, bob_party = await group("alice"), await group("bob")
    carol_party = await group("carol")
    call_id = await answered(alice_party, bob_party)
    alice, bob = CallPeer(alice_party, call_id, alice_frames), CallPeer(bob_party, call_id, bob_frames)
    try:
        first = await alice.join()
        await bob.join()
        await wait_for(lambda: len(alice.frames) >= 10 and len(bob.frames) >= 10, 10)
        assert alice.offers_answered == 0  # bob's track was announced in alice's answer
        session = engine.session(first["sessionId"])
        dtls = session.dtls

        # alice's connection restarts ICE from another address
        client = ClientRestart(alice.pc, "127.0.0.2")
        await client.gather()
        offer = client.offer()
        refused = await carol_party.call("call:sdp_offer", {"callId": call_id, "sdp": offer})
        assert "error" in refused, refused  # not a party of this call
        ack = await alice_party.call("call:sdp_offer", {"callId": call_id, "sdp": offer})
        assert ack["sessionId"] == first["sessionId"], ack
        remote, candidates = answer_parameters(ack["sdp"])
        await client.complete(remote, candidates)
        await wait_for(lambda: nominated_pair(session.ice)[1][0] == "127.0.0.2", 3)

        before_alice, before_bob = len(alice.frames), len(bob.frames)
        await wait_for(lambda: len(alice.frames) >= before_alice + 30 and len(bob.frames) >= before_bob + 30, 3)
        assert engine.session(first["sessionId"]) is session and session.dtls is dtls
        assert engine.session_count == 2 and alice.offers_answered == 0
        assert (await record(app, call_id))["status"] == "active"
        # the answer is a real answer for alice's connection (setRemoteDescription would take it)
        assert RTCSessionDescription(ack["sdp"], "answer").type == "answer"
        assert "a=setup:active" in ack["sdp"] or "a=setup:passive" in ack["sdp"]
    finally:
        await alice.close()
        await bob.close()
        await group.close()
