"""RTP back into frames, on packets made by aiortc's own packetizers: whole
frames come out as they went in; a lost packet costs its frame and, for
video, every frame up to the next keyframe; dimensions from the bitstream."""

from __future__ import annotations

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

from recording.frames import (
    FrameAssembler,
    ReorderBuffer,
    annexb_units,
    h264_dimensions,
    vp8_dimensions,
)

FRAME_TICKS = 3000


def _rtp(payloads_per_frame: list[list[bytes]]) -> list[bytes]:
    packets, seq = [], 65000  # wraps around
    for n, payloads in enumerate(payloads_per_frame):
        for i, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF,
                               timestamp=(n * FRAME_TICKS) & 0xFFFFFFFF, ssrc=1234,
                               marker=int(i == len(payloads) - 1), payload=payload)
            packets.append(packet.serialize())
            seq += 1
    return packets


def _vp8_payloads(frames) -> list[list[bytes]]:
    return [Vp8Encoder._packetize(f.data, n) for n, f in enumerate(frames)]


def test_vp8_frames_come_out_as_they_went_in(vp8_frames) -> None:
    frames = vp8_frames[:30]
    assembler = FrameAssembler("VP8")
    out = [f for p in _rtp(_vp8_payloads(frames)) if (f := assembler.push(p)) is not None]
    assert [f.data for f in out] == [f.data for f in frames]
    assert out[0].keyframe and not any(f.keyframe for f in out[1:])
    assert [f.timestamp for f in out] == [n * FRAME_TICKS for n in range(30)]
    assert vp8_dimensions(out[0].data) == (320, 240)


def test_a_lost_packet_drops_video_until_the_next_keyframe(vp8_frames) -> None:
    frames = [*vp8_frames[:6], vp8_frames[0], *vp8_frames[1:4]]  # a keyframe again at 6
    payloads = _vp8_payloads(frames)
    assert len(payloads[2]) > 1 or len(payloads[0]) > 1
    lossy = 2 if len(payloads[2]) > 1 else 0
    packets = _rtp(payloads)
    first_of_lossy = sum(len(p) for p in payloads[:lossy])
    del packets[first_of_lossy + 1]  # the second packet of that frame
    assembler = FrameAssembler("vp8")
    out = [f for p in packets if (f := assembler.push(p)) is not None]
    kept = [f.data for f in frames[:lossy]] + [f.data for f in frames[6:]]
    assert [f.data for f in out] == kept
    assert assembler.dropped_frames >= 1


def test_padding_in_the_media_stream_takes_a_number_and_costs_no_frame(vp8_frames) -> None:
    """A sender that probes with padding-only packets in its media stream (no
    RTX) numbers them like media: they are no hole."""
    frames = vp8_frames[:30]
    packets, seq = [], 100
    for n, payloads in enumerate(_vp8_payloads(frames)):
        for i, payload in enumerate(payloads):
            packets.append(RtpPacket(payload_type=96, sequence_number=seq, timestamp=n * FRAME_TICKS,
                                     ssrc=1234, marker=int(i == len(payloads) - 1),
                                     payload=payload).serialize())
            seq += 1
        if n % 3 == 1:  # padding after the frame, with its timestamp
            for _ in range(2):
                padding = RtpPacket(payload_type=96, sequence_number=seq, timestamp=n * FRAME_TICKS,
                                    ssrc=1234)
                padding.padding_size = 200
                packets.append(padding.serialize())
                seq += 1
    assembler = FrameAssembler("vp8")
    out = [f for p in packets if (f := assembler.push(p)) is not None]
    assert [f.data for f in out] == [f.data for f in frames]
    assert assembler.dropped_frames == 0


def _seqs(packets: list[bytes]) -> list[int]:
    return [(p[2] << 8) | p[3] for p in packets]


def test_reordered_and_repaired_packets_make_every_frame(vp8_frames) -> None:
    """Swapped neighbours and a lost packet that comes back later (a repair)
    within the wait: every frame comes out, none dropped."""
    frames = vp8_frames[:30]
    packets = _rtp(_vp8_payloads(frames))
    arrival = list(packets)
    arrival[4], arrival[5] = arrival[5], arrival[4]
    arrival[20], arrival[21], arrival[22] = arrival[22], arrival[20], arrival[21]
    repaired = arrival.pop(10)
    arrival.insert(40, repaired)  # 30 packets later, as an RTX repair comes
    buffer, assembler = ReorderBuffer(wait=0.5), FrameAssembler("vp8")
    out: list[bytes] = []
    for n, packet in enumerate(arrival):
        out += buffer.push(packet, now=n * 0.004)  # 250 packets a second
    assert out == packets
    frames_out = [f for p in out if (f := assembler.push(p)) is not None]
    assert [f.data for f in frames_out] == [f.data for f in frames]
    assert assembler.dropped_frames == 0


def test_a_hole_is_given_up_after_the_wait_and_a_late_packet_after_it_is_dropped() -> None:
    packets = [RtpPacket(payload_type=96, sequence_number=(65530 + i) & 0xFFFF, timestamp=i,
                         ssrc=1, payload=b"x").serialize() for i in range(12)]
    buffer = ReorderBuffer(wait=0.5)
    assert _seqs(buffer.push(packets[0], 0.0)) == [65530]
    # 65531 is lost: what follows waits for it
    assert buffer.push(packets[2], 0.1) == [] and buffer.push(packets[3], 0.2) == []
    assert buffer.push(packets[4], 0.59) == []
    # the first held packet has waited 0.5 s: the hole is given up
    assert _seqs(buffer.push(packets[5], 0.6)) == [65532, 65533, 65534, 65535]
    assert buffer.push(packets[1], 0.7) == []  # too late: the assembler never sees it
    assert _seqs(buffer.push(packets[6], 0.8)) == [0]
    # a second hole at 1 (across the wrap); the end of the recording gives up holes
    assert buffer.push(packets[8], 0.9) == [] and buffer.push(packets[10], 0.95) == []
    assert _seqs(buffer.flush()) == [2, 4]
    assert buffer.flush() == []


def test_missing_numbers_are_listed_once_as_they_are_found() -> None:
    def packet(seq: int) -> bytes:
        return RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=seq, ssrc=1).serialize()

    buffer = ReorderBuffer(wait=0.5)
    buffer.push(packet(65533), 0.0)
    buffer.push(packet(65536), 0.01)  # 65534 and 65535 missing
    assert buffer.holes == [65534, 65535]
    buffer.holes.clear()
    buffer.push(packet(65535), 0.02)  # a late one fills a hole: nothing new is missing
    buffer.push(packet(65539), 0.03)  # across the wrap: 1 and 2
    assert buffer.holes == [1, 2]
    buffer.holes.clear()
    assert _seqs(buffer.push(packet(65534), 0.04)) == [65534, 65535, 0]
    assert _seqs(buffer.push(packet(65537), 0.05)) == [1]  # seen as missing already
    assert buffer.holes == []


def test_a_jump_beyond_the_limit_starts_the_count_over() -> None:
    def packet(seq: int) -> bytes:
        return RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq, ssrc=1).serialize()

    buffer = ReorderBuffer(wait=0.5, limit=8)
    buffer.push(packet(100), 0.0)
    assert buffer.push(packet(102), 0.0) == []  # a hole at 101
    # 5,000 ahead: a new count (a restarted sender), not a hole to wait for
    assert _seqs(buffer.push(packet(5102), 0.01)) == [102, 5102]
    assert _seqs(buffer.push(packet(5103), 0.02)) == [5103]
    # more held than the limit: the oldest hole is given up at once
    out = [seq for n in range(5105, 5115) for seq in _seqs(buffer.push(packet(n), 0.03))]
    assert out[:2] == [5105, 5106] and out == list(range(5105, 5105 + len(out)))


def test_h264_access_units_come_out_as_nal_units(h264_frames) -> None:
    frames = h264_frames[:20]
    payloads = [H264Encoder._packetize(annexb_units(f.data)) for f in frames]
    assembler = FrameAssembler("H264")
    out = [f for p in _rtp(payloads) if (f := assembler.push(p)) is not None]
    assert [annexb_units(f.data) for f in out] == [annexb_units(f.data) for f in frames]
    assert out[0].keyframe and h264_dimensions(out[0].data) == (320, 240)


def test_opus_packets_are_frames(opus_frames) -> None:
    assembler = FrameAssembler("opus")
    out = [assembler.push(p) for p in _rtp([[f.data] for f in opus_frames[:10]])]
    assert [f.data for f in out if f] == [f.data for f in opus_frames[:10]]


def test_h264_dimensions_follow_the_sps_cropping() -> None:
    for profile, (width, height) in (("high", (200, 90)), ("baseline", (1280, 720)), ("main", (642, 362))):
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        encoder.options = {"preset": "ultrafast", "profile": profile}
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.pts = 0
        access_unit = b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])
        assert h264_dimensions(access_unit) == (width, height), profile
