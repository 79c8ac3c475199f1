"""The publisher leg adapts: every WebRTC publisher gets REMB from our
receive-side estimate; in a call, no more than the other party's downlink."""

from __future__ import annotations

import asyncio

from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from .sfu_peers import PacketTrack, Publisher, wait_for
from .sfu_simulcast import quiet_remb, send_remb
from .test_call import CallParty


def _watch_remb(sender, out: list) -> None:  # noqa: ANN001
    handle = sender._handle_rtcp_packet

    async def _handle_rtcp_packet(packet) -> None:  # noqa: ANN001
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            out.append(unpack_remb_fci(packet.fci))
        await handle(packet)

    sender._handle_rtcp_packet = _handle_rtcp_packet


async def test_a_publisher_gets_remb(engine, vp8_frames):
    pub = Publisher([PacketTrack("video", vp8_frames)])
    offer = await pub.offer()
    assert "goog-remb" in offer and "abs-send-time" in offer  # aiortc offers both
    session = await engine.publish("remb", offer)
    assert "a=rtcp-fb:" in session.answer_sdp and "goog-remb" in session.answer_sdp
    await pub.accept(session.answer_sdp)
    rembs: list = []
    _watch_remb(pub.senders[0], rembs)
    await wait_for(lambda: len(rembs) >= 2, 8)
    bitrate, ssrcs = rembs[-1]
    assert bitrate > 0 and session.uplink_bitrate is not None
    assert session.uptracks[0].in_ssrc in ssrcs
    await pub.close()


async def test_a_call_party_is_told_no_more_than_the_other_partys_downlink(engine, vp8_frames):
    alice = CallParty(vp8_frames)
    a = await engine.join_call("remb-call", await alice.offer(), owner="alice")
    await alice.accept(a.answer_sdp)
    bob = CallParty(vp8_frames)
    b = await engine.join_call("remb-call", await bob.offer(), owner="bob")
    await bob.accept(b.answer_sdp)
    await wait_for(lambda: len(bob.frames) >= 5, 10)

    # bob's browser says its downlink holds 200 kbit/s: alice is told so
    quiet_remb(bob.transceiver.receiver)
    rembs: list = []
    _watch_remb(alice.transceiver.sender, rembs)
    for _ in range(50):
        await send_remb(bob.transceiver.receiver, 200_000)
        await asyncio.sleep(0.1)
        if rembs and rembs[-1][0] <= 200_000:
            break
    assert rembs and rembs[-1][0] <= 200_000
    assert abs(b.stats()["downlink_bps"] - 200_000) < 2_000
    await alice.pc.close()
    await bob.pc.close()
