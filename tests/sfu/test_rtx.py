"""RTX (RFC 4588) on both legs: subscribers that offer it get their repairs in
their own RTX stream, subscribers that do not get them in the media stream,
and a publisher's RTX repairs fill the holes of what subscribers get."""

from __future__ import annotations

import asyncio
import os
import random
import struct

import pytest
from aiortc import RTCRtpSender
from aiortc.rtp import RtpPacket, unwrap_rtx, wrap_rtx
from prometheus_client import REGISTRY

from sfu import MediaEngine, rtx, track

from .sfu_offers import CHROME_PUBLISH
from .sfu_peers import (
    PacketTrack,
    Publisher,
    Viewer,
    client_pc,
    drop_rtp,
    lose_every_sixth,
    wait_for,
)

# -- the packets ----------------------------------------------------------------------------


def _rtp(seq: int, *, pt: int = 96, ssrc: int = 1234, marker: bool = False, ext: bool = False,
         csrc: int = 0, padding: int = 0, payload: bytes = b"payload!") -> bytes:
    b0 = 0x80 | csrc | (0x10 if ext else 0) | (0x20 if padding else 0)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, 90000, ssrc)
    out += b"".join(struct.pack("!I", 100 + i) for i in range(csrc))
    if ext:
        out += struct.pack("!HH", 0xBEDE, 1) + b"\x10\x07\x00\x00"
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


@pytest.mark.parametrize(
    "shape",
    [{}, {"marker": True}, {"ext": True}, {"csrc": 2}, {"ext": True, "csrc": 1, "padding": 4}],
)
def test_wrap_and_unwrap_agree_with_rfc4588_as_aiortc_reads_it(shape):
    original = _rtp(65535, payload=os.urandom(300), **shape)
    packet = rtx.wrap(original, 97, 17, struct.pack("!I", 5678))
    theirs = RtpPacket.parse(packet)
    assert (theirs.payload_type, theirs.sequence_number, theirs.ssrc) == (97, 17, 5678)
    assert theirs.marker == shape.get("marker", False)
    assert theirs.timestamp == 90000 and theirs.csrc == RtpPacket.parse(original).csrc
    assert theirs.padding_size == shape.get("padding", 0)
    restored = unwrap_rtx(theirs, payload_type=96, ssrc=1234)
    assert restored.sequence_number == 65535
    assert restored.payload == RtpPacket.parse(original).payload
    # and ours unwraps it back to the very bytes
    assert rtx.unwrap(packet, 96, 1234) == original


def test_unwrap_of_what_aiortc_wraps():
    media = RtpPacket(payload_type=100, marker=1, sequence_number=4242, timestamp=7, ssrc=11,
                      payload=b"\x90\x80abc")
    packet = bytes(wrap_rtx(media, payload_type=101, sequence_number=9, ssrc=12).serialize())
    assert rtx.unwrap(packet, 100, 11) == bytes(media.serialize())


@pytest.mark.parametrize(
    "packet",
    [
        _rtp(1, pt=97, payload=b""),  # no OSN
        _rtp(1, pt=97, payload=b"", padding=200),  # padding only, as senders probe with
        _rtp(1, pt=97, payload=b"\x00", padding=1),  # 1 byte left after padding
        _rtp(1, pt=97, payload=b"xy", padding=2)[:-1] + b"\xff",  # padding past the header
        _rtp(1, pt=97, ext=True)[:14],  # truncated extension
        b"\x80\x61\x00",
    ],
)
def test_unwrap_refuses_packets_without_an_original(packet):
    assert rtx.unwrap(packet, 96, 1234) is None


# -- negotiation ----------------------------------------------------------------------------


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _video_section(sdp: str) -> str:
    return sdp[sdp.index("m=video") :]


def _without_rtx(transceiver) -> None:
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() != "video/rtx"])


async def _live(engine, room, frames, *, rtx_publisher: bool = True, codec: str = "VP8"):
    track = PacketTrack("video", frames)
    pub = Publisher([track])
    caps = RTCRtpSender.getCapabilities("video").codecs
    pub.pc.getTransceivers()[0].setCodecPreferences(
        [c for c in caps if c.name in (codec, "rtx" if rtx_publisher else codec)]
    )
    session = await engine.publish(room, await pub.offer())
    await pub.accept(session.answer_sdp)
    await wait_for(lambda: session.state == "connected", 5)
    return pub, track, session


async def test_subscriber_answer_carries_rtx_only_when_offered(engine, vp8_frames):
    pub, _, _ = await _live(engine, "neg", vp8_frames)
    with_rtx = client_pc()
    with_rtx.addTransceiver("video", direction="recvonly")
    await with_rtx.setLocalDescription(await with_rtx.createOffer())
    offered = _video_section(with_rtx.localDescription.sdp)
    s = await engine.subscribe("neg", with_rtx.localDescription.sdp)
    video = _video_section(s.answer_sdp)
    down = s.downtracks[0]
    # aiortc offers VP8 as 97 and its RTX as 98: the answer keeps the offer's numbers
    assert "a=rtpmap:97 VP8/90000" in offered and "a=fmtp:98 apt=97" in offered
    assert "a=rtpmap:98 rtx/90000" in video and "a=fmtp:98 apt=97" in video
    assert down.rtx_payload_type == 98 and down.rtx_ssrc not in (None, down.ssrc)
    assert f"a=ssrc-group:FID {down.ssrc} {down.rtx_ssrc}" in video
    ssrc_lines = [line for line in video.split("\r\n") if line.startswith("a=ssrc:")]
    assert [int(line[7:].split()[0]) for line in ssrc_lines] == [down.ssrc] * 2 + [down.rtx_ssrc] * 2
    assert f"a=ssrc:{down.rtx_ssrc} cname:" in video and f"a=ssrc:{down.rtx_ssrc} msid:" in video

    plain = client_pc()
    _without_rtx(plain.addTransceiver("video", direction="recvonly"))
    await plain.setLocalDescription(await plain.createOffer())
    s2 = await engine.subscribe("neg", plain.localDescription.sdp)
    video = _video_section(s2.answer_sdp)
    assert "rtx" not in video and "ssrc-group" not in video
    assert s2.downtracks[0].rtx_payload_type is None
    await with_rtx.close()
    await plain.close()
    await pub.close()


# -- a viewer that loses packets ---------------------------------------------------------------


class DroppingViewer(Viewer):
    """A viewer whose network loses a random share of the server's first
    transmissions of the video stream (SRTP packets of the media SSRC, before
    decryption: a dropped packet's resend is then no SRTP replay), and which
    records every sequence number its receiver gets, after RTX unwrapping."""

    def __init__(self, *, offer_rtx: bool, loss: float, seed: int) -> None:
        super().__init__(("video",))
        if not offer_rtx:
            _without_rtx(self.transceivers[0])
        self.loss = loss
        self.rng = random.Random(seed)
        self.sent: set[int] = set()  # every media sequence number the server sent
        self.first: int | None = None  # the first of them
        self.dropped: set[int] = set()
        self.received: set[int] = set()  # what reached the jitter buffer
        self.rtx_packets = 0  # packets that arrived on an SSRC other than the media one
        self.media_ssrc: int | None = None
        self.watching = False  # record what the server sends
        self.dropping = False  # and lose some of it

    async def accept(self, answer_sdp: str) -> None:
        await super().accept(answer_sdp)
        receiver = self.transceivers[0].receiver

        def drop(ssrc: int, seq: int) -> bool:
            if ssrc != self.media_ssrc:
                self.rtx_packets += 1
            elif self.watching and seq not in self.sent:
                if self.first is None:
                    self.first = seq
                self.sent.add(seq)
                if self.dropping and self.rng.random() < self.loss:
                    self.dropped.add(seq)
                    return True
            return False

        drop_rtp(receiver.transport.transport, drop)
        jitter_buffer = receiver._RTCRtpReceiver__jitter_buffer
        add = jitter_buffer.add

        def add_and_record(packet):
            self.received.add(packet.sequence_number)
            return add(packet)

        jitter_buffer.add = add_and_record


async def _lossy_viewing(engine, frames, *, room: str, offer_rtx: bool, codec: str = "VP8"):
    pub, _, _ = await _live(engine, room, frames, codec=codec)
    viewer = DroppingViewer(offer_rtx=offer_rtx, loss=0.05, seed=17)
    session = await engine.subscribe(room, await viewer.offer())
    down = session.downtracks[0]
    viewer.media_ssrc = down.ssrc
    await viewer.accept(session.answer_sdp)
    await wait_for(lambda: len(viewer.frames["video"]) > 3, 5)
    viewer.watching = viewer.dropping = True
    await wait_for(lambda: viewer.first is not None, 5)
    first = viewer.first
    await wait_for(lambda: len(viewer.dropped) >= 25, 15)
    viewer.dropping = False
    span = max((seq - first) & 0xFFFF for seq in viewer.sent if (seq - first) & 0xFFFF < 0x8000)
    window = {(first + i) & 0xFFFF for i in range(span + 1)}
    dropped = set(viewer.dropped)
    await wait_for(lambda: window <= viewer.received, 5)
    # over a window of the stream, what the viewer received is what the server
    # sent: every sequence number, the lost ones included
    assert dropped <= window and window <= viewer.sent
    return pub, viewer, session, down, dropped


async def test_dropping_viewer_with_rtx_recovers_every_packet_from_the_rtx_stream(
    engine, vp8_frames
):
    rtx_before = _metric("airwave_sfu_rtx_sent_packets_total")
    pub, viewer, session, down, dropped = await _lossy_viewing(
        engine, vp8_frames, room="rtx", offer_rtx=True
    )
    assert down.rtx_payload_type is not None
    assert down.retransmitted >= len(dropped)
    assert viewer.rtx_packets >= len(dropped)  # the repairs came in the RTX stream
    assert _metric("airwave_sfu_rtx_sent_packets_total") - rtx_before >= len(dropped)
    await viewer.close()
    await pub.close()


async def test_dropping_h264_viewer_with_rtx_recovers_every_packet(engine, h264_frames):
    pub, viewer, session, down, dropped = await _lossy_viewing(
        engine, h264_frames, room="rtx-h264", offer_rtx=True, codec="H264"
    )
    assert session.downtracks[0].up.codec.mimeType == "video/H264"
    assert down.rtx_payload_type is not None and viewer.rtx_packets >= len(dropped)
    await viewer.close()
    await pub.close()


async def test_dropping_viewer_without_rtx_recovers_every_packet_from_the_media_stream(
    engine, vp8_frames
):
    rtx_before = _metric("airwave_sfu_rtx_sent_packets_total")
    pub, viewer, session, down, dropped = await _lossy_viewing(
        engine, vp8_frames, room="plain", offer_rtx=False
    )
    assert down.rtx_payload_type is None
    assert down.retransmitted >= len(dropped)
    assert viewer.rtx_packets == 0
    assert _metric("airwave_sfu_rtx_sent_packets_total") == rtx_before
    await viewer.close()
    await pub.close()


# -- a viewer that NACKs too much --------------------------------------------------------------


async def _nack(receiver, media_ssrc: int, seqs: list[int]) -> None:
    """One RTCP NACK from ``receiver`` naming ``seqs``, one FCI entry each (any
    order, across the wrap: aiortc's own serializer wants them ascending)."""
    fci = b"".join(struct.pack("!HH", seq, 0) for seq in seqs)
    rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc
    header = struct.pack("!BBHII", 0x81, 205, 2 + len(seqs), rtcp_ssrc, media_ssrc)
    await receiver.transport._send_rtp(header + fci)


async def test_nacks_in_a_loop_get_each_packet_once_a_round_trip_within_the_budget(engine, vp8_frames):
    """A client that sends the same NACK over and over (or NACKs everything)
    gets each packet resent once per round trip, and all repairs at most at
    the budget: NACKs never make a subscriber an amplifier."""
    pub, _, _ = await _live(engine, "loop", vp8_frames)
    viewer = Viewer()
    session = await engine.subscribe("loop", await viewer.offer())
    await viewer.accept(session.answer_sdp)
    await wait_for(lambda: len(viewer.payloads["video"]) >= 600, 30)
    down = session.downtracks[0]
    receiver = viewer.transceivers[0].receiver
    # the round trip is 300 ms (loopback's is under a millisecond; reports would set it back)
    down.on_report = lambda *_: None
    down.rtt = 0.3
    layer = down.layer
    assert layer is not None and not down.rewrites  # its sequence numbers are the layer's
    newest = layer.max_seq

    ten = [(newest - 20 - i) & 0xFFFF for i in range(10)]
    assert all(down.sent_packet(seq) is not None for seq in ten)
    before, skipped_before = down.retransmitted, _metric("airwave_sfu_resends_skipped_packets_total")
    started = asyncio.get_running_loop().time()
    for _ in range(30):
        await _nack(receiver, down.ssrc, ten)
    await wait_for(lambda: down.nacks >= 30, 5)
    elapsed = asyncio.get_running_loop().time() - started
    rounds = 1 + int(elapsed / 0.3)
    assert 10 <= down.retransmitted - before <= 10 * rounds, (down.retransmitted - before, elapsed)
    assert down.resends_skipped >= 300 - 10 * rounds
    assert _metric("airwave_sfu_resends_skipped_packets_total") - skipped_before >= 300 - 10 * rounds
    # a round trip later, a NACK for them is a new loss: resent again
    await asyncio.sleep(0.35)
    again = down.retransmitted
    await _nack(receiver, down.ssrc, ten)
    await wait_for(lambda: down.retransmitted - again == 10, 5)

    # NACKing the history, 128 packets a NACK: no more than the budget goes out
    await asyncio.sleep(0.6)  # the budget has filled up again
    history = [(newest - 50 - i) & 0xFFFF for i in range(3 * 128)]
    sizes = [len(packet) for seq in history if (packet := down.sent_packet(seq)) is not None]
    assert len(sizes) == len(history)
    rate = max(track.RESEND_MIN_BPS, layer.bitrate) / 8
    budget = rate * track.RESEND_BURST_SECONDS
    assert sum(sizes) > 2 * budget, "the test NACKs more than the budget"
    before = down.retransmitted
    started = asyncio.get_running_loop().time()
    for part in range(3):
        await _nack(receiver, down.ssrc, history[part * 128 : (part + 1) * 128])
    await wait_for(lambda: down.nacks >= 34, 5)
    elapsed = asyncio.get_running_loop().time() - started
    resent = down.retransmitted - before
    # at most as many packets as the smallest of them fill the budget with
    allowed, fits = budget + rate * elapsed, 0
    for size in sorted(sizes):
        allowed -= size
        if allowed < 0:
            break
        fits += 1
    assert 0 < resent <= fits < len(history), (resent, fits, elapsed)
    await viewer.close()
    await pub.close()


# -- a publisher that repairs over RTX ---------------------------------------------------------


def _record_media_payloads(pub: Publisher, media_ssrc: int) -> dict[int, bytes]:
    """seq -> payload of every packet the publisher sends in its media stream."""
    sent: dict[int, bytes] = {}
    transport = pub.senders[0].transport
    send = transport._send_rtp

    async def _send_rtp(data: bytes) -> None:
        if len(data) >= 12 and not 192 <= data[1] <= 223:
            packet = RtpPacket.parse(data)
            if packet.ssrc == media_ssrc:
                sent.setdefault(packet.sequence_number, packet.payload)
        await send(data)

    transport._send_rtp = _send_rtp
    return sent


async def test_publisher_repairs_over_rtx_reach_the_subscribers(engine, vp8_frames):
    pub, track, session = await _live(engine, "up", vp8_frames)
    up = session.uptracks[0]
    sender = pub.senders[0]
    # the answer accepted the publisher's RTX: it repairs in its own RTX stream
    assert up.rtx_payload_type is not None
    assert session._rtx_by_ssrc == {sender._rtx_ssrc: up.layers[0]}
    sent = _record_media_payloads(pub, sender._ssrc)
    viewer = Viewer()
    _without_rtx(viewer.transceivers[0])
    vs = await engine.subscribe("up", await viewer.offer())
    await viewer.accept(vs.answer_sdp)
    await wait_for(lambda: len(viewer.frames["video"]) > 3, 5)

    # the publisher's network loses every 6th packet of the media stream
    dropped, rtx_seen = lose_every_sixth(session, up.in_ssrc, sender._rtx_ssrc, 12)
    repaired_before = _metric("airwave_sfu_rtx_repaired_packets_total")
    await wait_for(lambda: len(dropped) == 12, 8)
    # the 12th loss shows only when the packet after it arrives: wait for every
    # hole to be filled, not merely for no hole to be known
    await wait_for(lambda: all(up.history(seq) is not None for seq in dropped), 5)
    assert not (set(up.layers[0].missing) & dropped)
    assert len(rtx_seen) >= 12
    assert _metric("airwave_sfu_rtx_repaired_packets_total") - repaired_before >= 12
    # the repaired packets went on to the subscriber, in its media stream
    lost_payloads = [sent[seq] for seq in dropped]
    await wait_for(lambda: all(p in viewer.payloads["video"] for p in lost_payloads), 5)
    await viewer.close()
    await pub.close()


async def test_rtx_ssrc_learned_from_payload_type_without_ssrc_lines(engine):
    """Chromium with simulcast announces no SSRCs: an unknown SSRC sending the
    RTX payload type is the track's RTX stream; its repairs fill the history."""
    offer = "\r\n".join(
        line for line in CHROME_PUBLISH.split("\r\n")
        if not line.startswith(("a=ssrc:", "a=ssrc-group:"))
    )
    session = await engine.publish("learn", offer)
    video = session.uptracks[1]
    assert video.rtx_payload_type == 97 and not session._rtx_by_ssrc
    for seq in (10, 11, 13):
        session._on_rtp(_rtp(seq, pt=96, ssrc=777, payload=bytes([seq]) * 20))
    assert video.in_ssrc == 777 and video.history(12) is None
    lost = _rtp(12, pt=96, ssrc=777, marker=True, payload=b"\x0c" * 20)
    repair = rtx.wrap(lost, 97, 500, struct.pack("!I", 778))
    padding = _rtp(501, pt=97, ssrc=778, payload=b"", padding=100)
    session._on_rtp(padding)  # nothing to unwrap
    session._on_rtp(repair)
    assert session._rtx_by_ssrc == {778: video.layers[0]}
    got = video.history(12)
    assert got is not None and got[12:] == b"\x0c" * 20 and got[1] & 0x80
    assert 12 not in video.layers[0].missing
    # a duplicate (the same repair again) is not forwarded twice
    assert not video.layers[0].on_repair(rtx.unwrap(repair, 96, 777))
    # a packet on the RTX SSRC with another payload type is not a repair
    session._on_rtp(rtx.wrap(_rtp(14, ssrc=777), 96, 502, struct.pack("!I", 778)))
    assert video.history(14) is None
    await asyncio.wait_for(session.close(), 5)


async def test_an_edge_pulls_with_rtx_and_its_losses_are_repaired_by_the_origin(
    engine, settings, vp8_frames
):
    pub, _, _ = await _live(engine, "edge", vp8_frames, rtx_publisher=False)
    edge = MediaEngine(settings, connect_timeout=10.0)
    at_origin = []

    async def exchange(offer: str) -> str:
        s = await engine.subscribe("edge", offer, owner="node:edge")
        at_origin.append(s)
        return s.answer_sdp

    try:
        pulled = await edge.pull("edge", exchange)
        down = at_origin[0].downtracks[0]
        up = pulled.uptracks[0]
        assert down.rtx_payload_type is not None and up.rtx_payload_type == down.rtx_payload_type
        assert pulled._rtx_by_ssrc == {down.rtx_ssrc: up.layers[0]}
        await wait_for(lambda: up.packets > 10, 5)
        before = _metric("airwave_sfu_rtx_repaired_packets_total")
        dropped, rtx_seen = lose_every_sixth(pulled, down.ssrc, down.rtx_ssrc, 10)
        await wait_for(lambda: len(dropped) == 10, 8)
        await wait_for(lambda: all(up.history(seq) is not None for seq in dropped), 5)
        assert len(rtx_seen) >= 10 and down.retransmitted >= 10
        assert _metric("airwave_sfu_rtx_repaired_packets_total") - before >= 10
    finally:
        await pub.close()
        await asyncio.wait_for(edge.close(), 10)
