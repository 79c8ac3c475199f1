"""ICE restart under a live DTLS association: the path changes (new ports, a
new client address), the session, its tracks and its SRTP keys stay."""

from __future__ import annotations

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceParameters
from prometheus_client import REGISTRY

from config.settings import Settings
from ingest.aac import opus_codec
from sfu import AtCapacity, IceRestartRefused, RestartTooSoon, SessionNotFound
from sfu import aiortc_seam as seam

from .sfu_media import encoded_vp8
from .sfu_peers import PacketTrack, Publisher, Viewer, vp8_keyframe, wait_for
from .sfu_restart import ClientRestart, answer_parameters, dtls_of, nominated_pair
from .test_call import CallParty


def _restarts(result: str) -> float:
    return REGISTRY.get_sample_value("airwave_sfu_ice_restarts_total", {"result": result}) or 0.0


@pytest.fixture
def handshakes(monkeypatch) -> list[RTCDtlsTransport]:
    """Every DTLS handshake that completes (it ends in keying SRTP)."""
    done: list[RTCDtlsTransport] = []
    setup = RTCDtlsTransport._setup_srtp

    def counted(self: RTCDtlsTransport) -> None:
        done.append(self)
        setup(self)

    monkeypatch.setattr(RTCDtlsTransport, "_setup_srtp", counted)
    return done


async def _live_room(engine, frames):
    track = PacketTrack("video", frames)
    publisher = Publisher([track])
    pub_session = await engine.publish("r", await publisher.offer(), owner="alice")
    await publisher.accept(pub_session.answer_sdp)
    viewer = Viewer(("video",))
    session = await engine.subscribe("r", await viewer.offer(), owner="bob")
    await viewer.accept(session.answer_sdp)
    await wait_for(lambda: len(viewer.frames["video"]) >= 10, 10)
    return publisher, pub_session, viewer, session


async def test_viewer_restarts_ice_onto_a_new_address_and_media_resumes(
    engine, vp8_frames, handshakes
):
    publisher, pub_session, viewer, session = await _live_room(engine, vp8_frames)
    try:
        assert len(handshakes) == 4  # publisher and viewer, each side
        dtls, rx, tx = session.dtls, session.dtls._rx_srtp, session.dtls._tx_srtp
        client_dtls = dtls_of(viewer.pc)
        old_server_pair = nominated_pair(session.ice)
        old_ufrag = session._gatherer.getLocalParameters().usernameFragment
        assert old_server_pair[1][0] == "127.0.0.1"

        completed = _restarts("completed")
        client = ClientRestart(viewer.pc, "127.0.0.2")
        params, candidates = await client.gather()
        assert [c.ip for c in candidates] == ["127.0.0.2"]
        ours, our_candidates = await session.restart_ice(params, candidates, complete=True)
        assert ours.usernameFragment != old_ufrag and our_candidates
        await client.complete(ours, our_candidates)
        await wait_for(lambda: nominated_pair(session.ice)[1][0] == "127.0.0.2", 3)

        # the path changed on both sides: new server socket, new client address
        local, remote = nominated_pair(session.ice)
        assert local != old_server_pair[0] and remote == nominated_pair(client.ice)[0]
        assert session.sender.addr == remote
        assert _restarts("completed") == completed + 1
        # media resumes on it, the keyframe asked at the swap first
        before = len(viewer.frames["video"])
        await wait_for(lambda: len(viewer.frames["video"]) >= before + 30, 3)
        assert any(vp8_keyframe(f) for _, f in viewer.frames["video"][before:])
        # same session, same DTLS association and SRTP contexts, no new handshake
        assert engine.session(session.id) is session and session.state == "connected"
        assert session.dtls is dtls and dtls._rx_srtp is rx and dtls._tx_srtp is tx
        assert dtls_of(viewer.pc) is client_dtls and client_dtls.state == "connected"
        assert len(handshakes) == 4
        assert session.ice.state == "completed" and viewer.pc.connectionState == "connected"
        # what the session describes from now on is the new generation
        assert session._gatherer.getLocalParameters().usernameFragment == ours.usernameFragment
        assert seam.remote_username(session.ice) == params.usernameFragment
    finally:
        await viewer.close()
        await publisher.close()


async def test_publisher_restarts_and_viewers_keep_receiving(engine, vp8_frames, handshakes):
    publisher, pub_session, viewer, session = await _live_room(engine, vp8_frames)
    try:
        client = ClientRestart(publisher.pc, "127.0.0.3")
        params, _ = await client.gather()
        # no usable candidate (a browser's are mDNS names) but their end: the
        # client's checks reveal its address (peer reflexive), as at the start
        ours, our_candidates = await pub_session.restart_ice(params, [], complete=True)
        await client.complete(ours, our_candidates)
        await wait_for(lambda: nominated_pair(pub_session.ice)[1][0] == "127.0.0.3", 3)
        forwarded = pub_session.uptracks[0].forwarded
        before = len(viewer.frames["video"])
        await wait_for(lambda: len(viewer.frames["video"]) >= before + 30, 3)
        assert pub_session.uptracks[0].forwarded > forwarded
        assert len(handshakes) == 4 and pub_session.state == "connected"
    finally:
        await viewer.close()
        await publisher.close()


async def test_a_restart_that_never_connects_leaves_the_old_path(engine, vp8_frames):
    engine.connect_timeout = 1.0
    publisher, _, viewer, session = await _live_room(engine, vp8_frames)
    try:
        old = nominated_pair(session.ice)
        failed = _restarts("failed")
        remote = RTCIceParameters(usernameFragment="gone", password="p" * 22)
        await session.restart_ice(remote, [], complete=False)
        with pytest.raises(RestartTooSoon):
            await session.restart_ice(remote, [])
        await wait_for(lambda: session._restart is None, 3)
        assert _restarts("failed") == failed + 1
        assert nominated_pair(session.ice) == old and session.state == "connected"
        before = len(viewer.frames["video"])
        await wait_for(lambda: len(viewer.frames["video"]) >= before + 10, 3)
    finally:
        await viewer.close()
        await publisher.close()


async def test_restart_refused_before_connected_and_after_close(engine, vp8_frames):
    publisher = Publisher([PacketTrack("video", vp8_frames)])
    # the publisher never takes the answer: the session stays connecting
    session = await engine.publish("r", await publisher.offer(), owner="alice")
    remote = RTCIceParameters(usernameFragment="abcd", password="p" * 22)
    with pytest.raises(IceRestartRefused):
        await session.restart_ice(remote, [])
    assert session.state == "connecting"
    await publisher.close()
    await engine.close_session(session.id)
    with pytest.raises(SessionNotFound):
        await session.restart_ice(remote, [])


async def test_call_party_restarts_through_a_new_offer_and_keeps_the_call(
    engine, vp8_frames, handshakes
):
    renegotiate: list = []
    engine.on_renegotiation_needed = renegotiate.append
    alice, bob = CallParty(vp8_frames), CallParty(encoded_vp8(45, seed=2))
    a = await engine.join_call("call", await alice.offer(), owner="alice")
    await alice.accept(a.answer_sdp)
    b = await engine.join_call("call", await bob.offer(), owner="bob")
    await bob.accept(b.answer_sdp)
    assert renegotiate == []  # bob's track was announced in alice's answer
    try:
        await wait_for(lambda: len(alice.frames) >= 10 and len(bob.frames) >= 10, 10)
        dtls, shaken = a.dtls, len(handshakes)
        # a restart is a new offer from alice's connection
        client = ClientRestart(alice.pc, "127.0.0.2")
        await client.gather()
        answer = await engine.restart_offer(a.id, client.offer())
        assert answer == a.answer_sdp and "a=sendrecv" in answer
        remote, candidates = answer_parameters(answer)
        assert remote.usernameFragment == a._restart.connection.local_username
        await client.complete(remote, candidates)
        await wait_for(lambda: nominated_pair(a.ice)[1][0] == "127.0.0.2", 3)
        # both directions resume on alice's new path: the call goes on
        before_alice, before_bob = len(alice.frames), len(bob.frames)
        await wait_for(
            lambda: len(alice.frames) >= before_alice + 30 and len(bob.frames) >= before_bob + 30, 3
        )
        assert engine.session(a.id) is a and a.dtls is dtls and len(handshakes) == shaken
        assert engine.session_count == 2 and renegotiate == []

        # an offer from another connection (other certificate) is no restart
        stranger = CallParty(vp8_frames)
        with pytest.raises(IceRestartRefused):
            await engine.restart_offer(a.id, await stranger.offer())
        await stranger.pc.close()
        # nor is an offer with the current credentials
        with pytest.raises(IceRestartRefused):
            await engine.restart_offer(a.id, client.offer())
    finally:
        await alice.pc.close()
        await bob.pc.close()


async def test_a_restart_with_no_free_port_is_refused_and_changes_nothing(engine, vp8_frames):
    publisher, _, viewer, session = await _live_room(engine, vp8_frames)
    try:
        old = nominated_pair(session.ice)
        taken = old[0][1]  # the session's own port: the only one of the range, and in use
        engine.settings = Settings(ice_addresses=("127.0.0.1",), udp_ports=(taken, taken))
        remote = RTCIceParameters(usernameFragment="full", password="p" * 22)
        with pytest.raises(AtCapacity):
            await session.restart_ice(remote, [])
        assert session._restart is None and not session.consent.hold
        assert nominated_pair(session.ice) == old and session.state == "connected"
    finally:
        await viewer.close()
        await publisher.close()


async def test_closing_a_session_mid_restart_releases_the_new_path(engine, vp8_frames):
    publisher, _, viewer, session = await _live_room(engine, vp8_frames)
    try:
        remote = RTCIceParameters(usernameFragment="late", password="p" * 22)
        await session.restart_ice(remote, [])
        restart = session._restart
        assert restart is not None and restart.connection._protocols
        await engine.close_session(session.id)
        assert restart.connection._protocols == [] and session._restart is None
        assert session.ice._connection._protocols == []
    finally:
        await viewer.close()
        await publisher.close()


async def test_a_local_publisher_has_no_ice_to_restart(engine):
    publisher = engine.publish_local("r", owner="alice", tracks=[("audio", opus_codec())])
    with pytest.raises(IceRestartRefused):
        await engine.restart_ice(publisher.id, "abcd", "p" * 22, [])
    with pytest.raises(IceRestartRefused):
        await engine.restart_offer(publisher.id, "v=0")
    assert engine.session(publisher.id) is publisher
    await engine.close_session(publisher.id)
