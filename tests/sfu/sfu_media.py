"""Pre-encoded test media made with PyAV, once per test session."""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

import av


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes
    keyframe: bool


def _video_frames(n: int, width: int, height: int, seed: int = 1):
    rng = random.Random(seed)
    noise = bytes(rng.randrange(256) for _ in range(width * height))
    for i in range(n):
        frame = av.VideoFrame(width, height, "yuv420p")
        for p, plane in enumerate(frame.planes):
            h = height if p == 0 else height // 2
            size = plane.line_size * h
            if p == 0:
                shift = (i * 7) % (width * height)
                row = noise[shift:] + noise[:shift]
                data = (row * (size // len(row) + 1))[:size]
            else:
                data = bytes([(i * 3 + p * 50) & 0xFF]) * size
            plane.update(data)
        frame.pts = i
        frame.time_base = Fraction(1, 30)
        yield frame


def _encode_video(
    codec: str,
    n: int,
    options: dict[str, str],
    profile: str | None = None,
    seed: int = 1,
    size: tuple[int, int] = (320, 240),
    bit_rate: int = 800_000,
):
    cc = av.CodecContext.create(codec, "w")
    cc.width, cc.height = size
    cc.pix_fmt = "yuv420p"
    cc.time_base = Fraction(1, 30)
    cc.framerate = Fraction(30, 1)
    cc.bit_rate = bit_rate
    cc.gop_size = 10_000  # one keyframe, at the start: later ones only on request
    if profile:
        cc.profile = profile
    cc.options = options
    out: list[EncodedFrame] = []
    for frame in _video_frames(n, size[0], size[1], seed):
        for packet in cc.encode(frame):
            out.append(EncodedFrame(bytes(packet), bool(packet.is_keyframe)))
    for packet in cc.encode(None):
        out.append(EncodedFrame(bytes(packet), bool(packet.is_keyframe)))
    return out


def encoded_vp8(
    n: int, seed: int = 1, size: tuple[int, int] = (320, 240), bit_rate: int = 800_000
) -> list[EncodedFrame]:
    options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    return _encode_video("libvpx", n, options, seed=seed, size=size, bit_rate=bit_rate)


def encoded_h264(
    n: int, seed: int = 1, size: tuple[int, int] = (320, 240), bit_rate: int = 800_000
) -> list[EncodedFrame]:
    return _encode_video(
        "libx264",
        n,
        {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"},
        profile="Constrained Baseline",
        seed=seed,
        size=size,
        bit_rate=bit_rate,
    )


def encoded_opus(n: int) -> list[EncodedFrame]:
    cc = av.CodecContext.create("libopus", "w")
    cc.sample_rate = 48000
    cc.layout = "stereo"
    cc.format = "s16"
    cc.bit_rate = 64000
    out: list[EncodedFrame] = []
    rng = random.Random(2)
    for i in range(n):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        frame.planes[0].update(bytes(rng.randrange(256) for _ in range(960 * 4)))
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = Fraction(1, 48000)
        for packet in cc.encode(frame):
            out.append(EncodedFrame(bytes(packet), True))
    return out


def nal_units(data: bytes) -> list[bytes]:
    """Split an Annex B H.264 access unit into NAL units (start codes dropped)."""
    units = []
    i, n = 0, len(data)
    starts = []
    while i < n - 2:
        if data[i] == 0 and data[i + 1] == 0 and data[i + 2] == 1:
            starts.append(i + 3)
            i += 3
        else:
            i += 1
    for k, s in enumerate(starts):
        e = starts[k + 1] - 3 if k + 1 < len(starts) else n
        unit = data[s:e]
        while unit.endswith(b"\x00"):
            unit = unit[:-1]
        units.append(unit)
    return units
