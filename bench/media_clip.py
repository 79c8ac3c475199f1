"""The publisher's media, encoded once with PyAV and cached: a few seconds of
1280x720 30 fps VP8 at about 1.5 Mbit/s (a keyframe every 2 s) and Opus.

The cache is a plain length-prefixed file per clip in the temp directory
(no pickle): ``[u32 count] ([u8 keyframe][u32 size][bytes])*``.
"""

from __future__ import annotations

import math
import os
import random
import struct
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

CACHE_VERSION = 2


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes
    keyframe: bool


@dataclass(frozen=True)
class VideoSpec:
    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate: int = 1_500_000
    seconds: int = 4
    gop: int = 60  # frames between keyframes

    @property
    def key(self) -> str:
        return (
            f"vp8-{self.width}x{self.height}-{self.fps}fps-{self.bitrate // 1000}k"
            f"-{self.seconds}s-g{self.gop}-v{CACHE_VERSION}"
        )


def cache_dir() -> Path:
    path = Path(os.environ.get("AIRWAVE_BENCH_CACHE", Path(tempfile.gettempdir()) / "airwave-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write(path: Path, frames: list[EncodedFrame]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(struct.pack("!I", len(frames)))
        for frame in frames:
            f.write(struct.pack("!BI", int(frame.keyframe), len(frame.data)))
            f.write(frame.data)
    tmp.replace(path)


def _read(path: Path) -> list[EncodedFrame] | None:
    try:
        blob = path.read_bytes()
        (count,) = struct.unpack_from("!I", blob, 0)
        offset = 4
        frames = []
        for _ in range(count):
            key, size = struct.unpack_from("!BI", blob, offset)
            offset += 5
            frames.append(EncodedFrame(blob[offset : offset + size], bool(key)))
            offset += size
        return frames if offset == len(blob) and frames else None
    except (OSError, struct.error):
        return None


def _cached(name: str, make) -> list[EncodedFrame]:
    path = cache_dir() / f"{name}.clip"
    frames = _read(path)
    if frames is None:
        frames = make()
        _write(path, frames)
    return frames


def _picture(spec: VideoSpec, i: int, noise: bytes) -> av.VideoFrame:
    """A moving noise texture over a gradient: enough detail that the encoder
    spends its whole budget, as a camera would."""
    w, h = spec.width, spec.height
    frame = av.VideoFrame(w, h, "yuv420p")
    for p, plane in enumerate(frame.planes):
        rows = h if p == 0 else h // 2
        size = plane.line_size * rows
        if p == 0:
            shift = (i * 4099) % len(noise)
            data = (noise[shift:] + noise[:shift]) * (size // len(noise) + 1)
            plane.update(data[:size])
        else:
            plane.update(bytes([(i * 2 + p * 80) & 0xFF]) * size)
    frame.pts = i
    frame.time_base = Fraction(1, spec.fps)
    return frame


def encode_video(spec: VideoSpec) -> list[EncodedFrame]:
    cc = av.CodecContext.create("libvpx", "w")
    cc.width, cc.height = spec.width, spec.height
    cc.pix_fmt = "yuv420p"
    cc.time_base = Fraction(1, spec.fps)
    cc.framerate = Fraction(spec.fps, 1)
    cc.bit_rate = spec.bitrate
    cc.gop_size = spec.gop
    cc.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(spec.bitrate),
        "maxrate": str(spec.bitrate),
        "bufsize": str(spec.bitrate),
        "keyint_min": str(spec.gop),
    }
    rng = random.Random(7)
    noise = bytes(rng.randrange(98, 158) for _ in range(spec.width * 64))
    total = spec.fps * spec.seconds
    frames: list[EncodedFrame] = []
    for i in range(total):
        frame = _picture(spec, i, noise)
        if i % spec.gop == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in cc.encode(frame):
            frames.append(EncodedFrame(bytes(packet), bool(packet.is_keyframe)))
    for packet in cc.encode(None):
        frames.append(EncodedFrame(bytes(packet), bool(packet.is_keyframe)))
    return frames[:total]


def encode_opus(seconds: int) -> list[EncodedFrame]:
    cc = av.CodecContext.create("libopus", "w")
    cc.sample_rate = 48000
    cc.layout = "stereo"
    cc.format = "s16"
    cc.bit_rate = 64000
    cc.time_base = Fraction(1, 48000)
    frames: list[EncodedFrame] = []
    samples = 960
    for n in range(seconds * 50):
        pcm = bytearray()
        for s in range(samples):
            v = int(8000 * math.sin(2 * math.pi * 440 * (n * samples + s) / 48000))
            pcm += struct.pack("<hh", v, v)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
        frame.planes[0].update(bytes(pcm))
        frame.sample_rate = 48000
        frame.pts = n * samples
        frame.time_base = Fraction(1, 48000)
        for packet in cc.encode(frame):
            frames.append(EncodedFrame(bytes(packet), True))
    return frames


def video_clip(spec: VideoSpec | None = None) -> list[EncodedFrame]:
    spec = spec or VideoSpec()
    return _cached(spec.key, lambda: encode_video(spec))


def audio_clip(seconds: int = 4) -> list[EncodedFrame]:
    return _cached(f"opus-48k-stereo-64k-{seconds}s-v{CACHE_VERSION}", lambda: encode_opus(seconds))


def bitrate(frames: list[EncodedFrame], fps: float) -> float:
    """Average bits per second of ``frames`` played at ``fps``."""
    return sum(len(f.data) for f in frames) * 8 * fps / max(1, len(frames))
