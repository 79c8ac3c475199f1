"""The call shape: two parties, one sendrecv connection each; the first party's
answer announces the second party's tracks, which are sent there once the
second joins; a track that fits no announcement is offered by renegotiation."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCSessionDescription

from sfu import NothingAcceptable, PublisherExists

from .sfu_media import encoded_vp8
from .sfu_peers import PacketTrack, Viewer, client_pc, wait_for


class CallParty:
    def __init__(self, frames) -> None:
        self.pc = client_pc()
        self.track = PacketTrack("video", frames)
        self.transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        self.tap = Viewer.__new__(Viewer)  # reuse the viewer's receiver tap
        self.tap.frames = {"video": []}
        self.tap.payloads = {"video": []}
        self.tapped = False

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        self._tap()

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        self._tap()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def _tap(self) -> None:
        if not self.tapped:
            self.tapped = True
            Viewer._tap(self.tap, self.transceiver.receiver, "video")

    @property
    def frames(self) -> list[bytes]:
        return [f for _, f in self.tap.frames["video"]]


def _ssrcs(sdp: str) -> set[int]:
    return {int(line.split()[0][len("a=ssrc:"):]) for line in sdp.splitlines() if line.startswith("a=ssrc:")}


async def test_two_party_call_with_announced_tracks(engine, vp8_frames):
    renegotiate: list = []
    engine.on_renegotiation_needed = renegotiate.append

    alice = CallParty(vp8_frames)
    a = await engine.join_call("call", await alice.offer(), owner="alice")
    # nobody to receive from yet, but alice's answer announces the track she will get
    assert "a=sendrecv" in a.answer_sdp and "a=recvonly" not in a.answer_sdp
    announced = _ssrcs(a.answer_sdp)
    assert announced and a.downtracks == []
    await alice.accept(a.answer_sdp)

    bob = CallParty(encoded_vp8(45, seed=2))  # other pictures than alice's
    b = await engine.join_call("call", await bob.offer(), owner="bob")
    assert "a=sendrecv" in b.answer_sdp  # bob gets alice's video at once
    await bob.accept(b.answer_sdp)

    # bob's track took the SSRC announced to alice: no server offer
    assert renegotiate == []
    assert [d.ssrc for d in a.downtracks] == [b.uptracks[0].out_ssrc]
    assert b.uptracks[0].out_ssrc in announced

    await wait_for(lambda: len(alice.frames) >= 15 and len(bob.frames) >= 15, 10)
    assert set(bob.frames) <= set(alice.track.sent)
    assert set(alice.frames) <= set(bob.track.sent)
    assert not set(alice.frames) & set(bob.frames)

    # a third party is refused; a WHIP publisher too
    with pytest.raises(PublisherExists):
        await engine.join_call("call", await CallParty(vp8_frames).offer())
    with pytest.raises(PublisherExists):
        await engine.publish("call", await CallParty(vp8_frames).offer())

    # bob hangs up: alice's session stays, and stops receiving bob
    await bob.pc.close()
    await wait_for(lambda: b.closed, 5)
    assert a.state == "connected" and a.downtracks == []

    # bob comes back on a new connection: the announced SSRC carried his old
    # track, so alice is offered the new one by renegotiation
    carol = CallParty(encoded_vp8(45, seed=3))
    c = await engine.join_call("call", await carol.offer(), owner="bob")
    await carol.accept(c.answer_sdp)
    assert renegotiate == [a]
    assert c.uptracks[0].out_ssrc not in announced
    offer = a.create_offer()
    assert "a=sendrecv" in offer and "a=setup:actpass" in offer
    assert _ssrcs(offer) == {c.uptracks[0].out_ssrc, a.downtracks[0].rtx_ssrc} - {None}
    await a.accept_answer(await alice.answer(offer))
    seen = len(alice.frames)
    await wait_for(lambda: len(alice.frames) >= seen + 15, 10)
    assert set(alice.frames[seen:]) <= set(carol.track.sent) | set(bob.track.sent)
    assert set(alice.frames[-5:]) <= set(carol.track.sent)
    await carol.pc.close()
    await alice.pc.close()
    await wait_for(lambda: engine.session_count == 0, 5)


async def test_call_party_with_nothing_to_send_or_receive(engine):
    pc = client_pc()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    with pytest.raises(NothingAcceptable):
        await engine.join_call("c2", pc.localDescription.sdp)
    await pc.close()
    await asyncio.sleep(0)


async def test_both_parties_offering_at_once_get_each_others_media(engine, vp8_frames):
    """Apps send their offers together on call:answered: neither may miss the other."""
    renegotiate: list = []
    engine.on_renegotiation_needed = renegotiate.append
    alice, bob = CallParty(vp8_frames), CallParty(encoded_vp8(45, seed=2))
    a, b = await asyncio.gather(
        engine.join_call("both", await alice.offer(), owner="alice"),
        engine.join_call("both", await bob.offer(), owner="bob"),
    )
    await alice.accept(a.answer_sdp)
    await bob.accept(b.answer_sdp)
    # whoever could not be given the other's track in its answer had it announced there
    assert renegotiate == []
    assert "a=recvonly" not in a.answer_sdp and "a=recvonly" not in b.answer_sdp
    await wait_for(lambda: len(alice.frames) >= 10 and len(bob.frames) >= 10, 10)
    assert set(alice.frames) <= set(bob.track.sent)
    assert set(bob.frames) <= set(alice.track.sent)
    await alice.pc.close()
    await bob.pc.close()
    await wait_for(lambda: engine.session_count == 0, 5)
