"""RTP back into frames, on packets made by aiortc's own packetizers: whole
frames come out as they went in; a lost packet costs its frame and, for
video, every frame up to the next keyframe; dimensions from the bitstream."""

from __future__ import annotations

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

from recording.frames import FrameAssembler, annexb_units, h264_dimensions, vp8_dimensions

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
