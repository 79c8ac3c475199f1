"""The fan-out path (header rewrite, SRTP protect, UDP send) with 150 viewers on
real SRTP sessions and a real loopback socket. Its speed is measured by
bench/ (bench/RESULTS.md), never asserted here."""

from __future__ import annotations

import asyncio
import os
import struct

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pylibsrtp import Policy, Session

from sfu.track import DownTrack, UpTrack

VIEWERS = 150
PACKETS = 400  # about 3 s of a 1.5 Mbit/s stream


class _Publisher:
    id = "p"
    sender = None
    rtcp_ssrc = 1


class _Sink(asyncio.DatagramProtocol):
    pass


def _srtp() -> Session:
    policy = Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return Session(policy)


async def test_every_waiting_viewer_gets_every_packet_after_a_keyframe():
    loop = asyncio.get_running_loop()
    sink, _ = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    out, _ = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    addr = sink.get_extra_info("sockname")
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    up = UpTrack(_Publisher(), kind="video", mid="0", codec=codec, ssrcs=[42], out_ssrc=7)
    for i in range(VIEWERS):
        down = DownTrack(None, up, mid="0", payload_type=96 if i % 3 else 97)
        down.start((_srtp().protect, out.sendto, addr))
    # publisher packets with a header extension, as browsers send them
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\x01\x00\x00"
    packets = [
        struct.pack("!BBHII", 0x90, 0x60 | (0x80 if i % 8 == 7 else 0), i, 3000 * (i // 8), 42)
        + ext
        + os.urandom(1150)
        for i in range(PACKETS)
    ]
    # a VP8 keyframe's first packet: the waiting subscribers become active
    up.on_rtp(packets[0][:20] + b"\x10\x00" + packets[0][22:])
    assert len(up.down) == VIEWERS
    for data in packets[1:]:
        up.on_rtp(data)
    assert up.forwarded == PACKETS * VIEWERS
    sink.close()
    out.close()
    up.close()


async def test_padding_between_frames_does_not_hide_the_next_keyframe():
    """A sender that probes with padding-only packets in its media stream (ours
    toward an edge does): the frame after them still starts a frame, so a
    waiting viewer starts at its keyframe, not after KEYFRAME_WAIT."""
    loop = asyncio.get_running_loop()
    sink, _ = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    out, _ = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    up = UpTrack(_Publisher(), kind="video", mid="0", codec=codec, ssrcs=[42], out_ssrc=7)
    delta = struct.pack("!BBHII", 0x80, 0x60 | 0x80, 1, 3000, 42) + b"\x10\x31" + os.urandom(500)
    up.on_rtp(delta)  # a whole interframe: the next packet starts a frame
    down = DownTrack(None, up, mid="0", payload_type=96)
    down.start((_srtp().protect, out.sendto, sink.get_extra_info("sockname")))
    assert down.layer is None  # waiting for a keyframe
    padding = struct.pack("!BBHII", 0xA0, 0x60, 2, 3000, 42) + bytes(199) + bytes((200,))
    up.on_rtp(padding)
    key = struct.pack("!BBHII", 0x80, 0x60 | 0x80, 3, 6000, 42) + b"\x10\x30" + os.urandom(500)
    up.on_rtp(key)
    assert down.layer is up.layers[0]
    sink.close()
    out.close()
    up.close()


def test_keyframe_start_detection():
    from sfu.track import h264_keyframe_start, vp8_keyframe_start

    hdr = bytes(12)
    # VP8: S=1 PID=0, no extension; P bit 0 = keyframe, 1 = interframe
    assert vp8_keyframe_start(hdr + b"\x10\x9d", 12) is False  # 0x9d has P=1
    assert vp8_keyframe_start(hdr + b"\x10\x30", 12) is True
    assert vp8_keyframe_start(hdr + b"\x00\x30", 12) is False  # not a partition start
    # with X, I (15-bit picture id), L, T: descriptor is 6 bytes
    assert vp8_keyframe_start(hdr + b"\x90\xe0\x80\x01\x00\x00\x30", 12) is True
    assert vp8_keyframe_start(hdr + b"\x90\xe0\x80", 12) is False  # truncated
    # H.264: SPS, IDR, STAP-A with SPS, FU-A start of IDR; not a P slice or FU-A middle
    assert h264_keyframe_start(hdr + b"\x67\x42", 12)
    assert h264_keyframe_start(hdr + b"\x65\x88", 12)
    assert h264_keyframe_start(hdr + b"\x78\x00\x02\x67\x42\x00\x02\x68\xce", 12)
    assert h264_keyframe_start(hdr + b"\x7c\x85\x00", 12)
    assert not h264_keyframe_start(hdr + b"\x41\x9a", 12)
    assert not h264_keyframe_start(hdr + b"\x7c\x05\x00", 12)
    assert not h264_keyframe_start(hdr + b"\x78\x00\x02\x41\x9a", 12)
    assert not h264_keyframe_start(hdr, 12)


@given(st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=30))
@hsettings(max_examples=300, deadline=None)
def test_any_bytes_from_a_publisher_are_survived(packets):
    """Whatever a publisher sends after SRTP, the forwarding path raises nothing."""

    async def run() -> list[bytes]:
        codec = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=96)
        up = UpTrack(_Publisher(), kind="video", mid="0", codec=codec, ssrcs=[42], out_ssrc=7)
        down = DownTrack(None, up, mid="0", payload_type=100)
        sent: list[bytes] = []
        down.start((bytes, lambda data, addr: sent.append(data), ("127.0.0.1", 9)))
        for data in packets:
            if len(data) >= 12:  # Session._on_rtp drops shorter ones
                up.on_rtp(data)
                down.retransmit([int.from_bytes(data[2:4], "big")])
        up.close()
        return sent

    sent = asyncio.run(run())
    assert all(p[1] & 0x7F == 100 and p[8:12] == b"\x00\x00\x00\x07" for p in sent)


def test_a_late_viewer_gets_audio_without_marker_bits():
    """Chromium sets the marker bit on an Opus talkspurt's first packet only:
    a viewer joining later still starts at once."""

    async def run() -> list[bytes]:
        codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111)
        up = UpTrack(_Publisher(), kind="audio", mid="0", codec=codec, ssrcs=[42], out_ssrc=7)
        packets = [struct.pack("!BBHII", 0x80, 111 | (0x80 if i == 0 else 0), i, 960 * i, 42)
                   + os.urandom(60) for i in range(20)]
        for data in packets[:10]:
            up.on_rtp(data)
        down = DownTrack(None, up, mid="0", payload_type=109)
        sent: list[bytes] = []
        down.start((bytes, lambda data, addr: sent.append(data), ("127.0.0.1", 9)))
        for data in packets[10:]:
            up.on_rtp(data)
        up.close()
        return sent

    sent = asyncio.run(run())
    assert len(sent) == 10 and all(p[1] & 0x7F == 109 for p in sent)
