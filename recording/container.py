"""Encoded frames into a file with PyAV, never decoding: WebM or fragmented MP4.

PyAV opens an encoder for every output stream unless the stream is made
from a template stream; the templates come from a tiny in-memory Matroska
file made once per process (one frame of each codec), and each recording's
streams then get their own dimensions and parameter sets. Fragmented MP4
(``frag_keyframe+empty_moov+default_base_moof``, and a fragment at least
every second; a WebM cluster too) and WebM are written as they
go, so a file whose writer died mid-way is playable up to its last fragment
or cluster.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import av

FORMATS = {"vp8": ("webm", "webm"), "h264": ("mp4", "mp4")}
MP4_FLAGS = "frag_keyframe+empty_moov+default_base_moof"
FRAGMENT_MICROSECONDS = "1000000"  # a fragment at least every second, keyframe or not
CLUSTER_MILLISECONDS = "1000"  # WebM: a cluster at least every second
_TEMPLATE_CODECS = {"vp8": "libvpx", "h264": "libx264", "opus": "libopus"}
_templates: dict[str, Any] = {}
_templates_lock = threading.Lock()


@dataclass(frozen=True)
class VideoFormat:
    codec: str  # "vp8" or "h264"
    width: int
    height: int
    extradata: bytes = b""  # H.264: SPS and PPS, Annex B


def container_format(video_codec: str | None) -> tuple[str, str]:
    """(PyAV format name, file extension) for a recording with this video codec."""
    return FORMATS.get(video_codec or "vp8", FORMATS["vp8"])


def _template_streams() -> dict[str, Any]:
    """One stream per codec from a one-frame Matroska file, made once per process."""
    with _templates_lock:
        if _templates:
            return _templates
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="matroska") as out:
            frames: list[tuple[Any, Any]] = []
            for codec, encoder in _TEMPLATE_CODECS.items():
                if codec == "opus":
                    stream = out.add_stream(encoder, rate=48000)
                    stream.layout = "stereo"
                    frame: Any = av.AudioFrame(format="s16", layout="stereo", samples=960)
                    frame.planes[0].update(bytes(frame.planes[0].buffer_size))
                    frame.sample_rate = 48000
                else:
                    stream = out.add_stream(encoder, rate=30)
                    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
                    frame = av.VideoFrame(64, 64, "yuv420p")
                frame.pts = 0
                frames.append((stream, frame))
            for stream, frame in frames:  # every stream is added before the header is written
                for packet in [*stream.encode(frame), *stream.encode(None)]:
                    out.mux(packet)
        buffer.seek(0)
        source = av.open(buffer, "r")
        by_name = {s.codec_context.name: s for s in source.streams}
        _templates.update({codec: by_name[codec] for codec in _TEMPLATE_CODECS})
        _templates["_source"] = source  # keeps the template streams alive
        return _templates


class RecordingFile:
    """One output file: a video stream (optional) and an audio stream (optional)."""

    def __init__(self, file: BinaryIO, video: VideoFormat | None, audio: bool) -> None:
        fmt, _ = container_format(video.codec if video else None)
        options = (
            {"movflags": MP4_FLAGS, "frag_duration": FRAGMENT_MICROSECONDS}
            if fmt == "mp4"
            else {"cluster_time_limit": CLUSTER_MILLISECONDS}
        )
        self.file = file
        self.output = av.open(file, "w", format=fmt, options=options)
        templates = _template_streams()
        self.video = self.audio = None
        if video is not None:
            self.video = self.output.add_stream_from_template(templates[video.codec], opaque=True)
            ctx = self.video.codec_context
            ctx.width, ctx.height = video.width, video.height
            ctx.extradata = video.extradata or None
            self.video.time_base = Fraction(1, 90000)
        if audio:
            self.audio = self.output.add_stream_from_template(templates["opus"], opaque=True)
            self.audio.time_base = Fraction(1, 48000)
        self.packets = 0

    def write(self, kind: str, data: bytes, pts: int, keyframe: bool) -> None:
        """One frame; ``pts`` in the track's RTP clock (90 kHz video, 48 kHz Opus)."""
        stream = self.video if kind == "video" else self.audio
        if stream is None:
            return
        packet = av.Packet(data)
        packet.stream = stream
        packet.time_base = Fraction(1, 90000 if kind == "video" else 48000)
        packet.pts = packet.dts = pts
        packet.is_keyframe = keyframe
        self.output.mux(packet)
        self.packets += 1

    def close(self) -> None:
        """Write the trailer (index, duration) and close the file."""
        try:
            self.output.close()
        finally:
            self.file.close()
