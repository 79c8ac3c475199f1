"""Reading a recording back with PyAV: its streams, packets and duration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av


@dataclass
class RecordedFile:
    codecs: dict[str, str]  # kind -> codec name
    packets: dict[str, list[bytes]] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)  # seconds, per packet
    extradata: dict[str, bytes] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return max(t[-1] for t in self.times.values() if t) - min(t[0] for t in self.times.values() if t)


def read_recording(path: Path | str) -> RecordedFile:
    with av.open(str(path)) as container:
        kinds = {s.index: s.type for s in container.streams}
        recorded = RecordedFile({s.type: s.codec_context.name for s in container.streams})
        for s in container.streams:
            recorded.extradata[s.type] = s.codec_context.extradata or b""
        try:
            for packet in container.demux():
                if packet.size == 0 or packet.pts is None:
                    continue
                kind = kinds[packet.stream.index]
                recorded.packets.setdefault(kind, []).append(bytes(packet))
                recorded.times.setdefault(kind, []).append(float(packet.pts * packet.time_base))
        except av.EOFError:
            pass  # a file whose writer was killed ends mid-cluster
    return recorded


def decodes(path: Path | str, kind: str = "video", frames: int = 5) -> int:
    """How many of the first ``frames`` frames of ``kind`` decode."""
    decoded = 0
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        for frame in container.decode(stream):
            decoded += frame is not None
            if decoded >= frames:
                break
    return decoded


def length_prefixed_units(data: bytes) -> list[bytes]:
    """NAL units of an MP4 (avcC, 4-byte lengths) sample."""
    units, pos = [], 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        units.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return units
