"""RTP packets of one track back into encoded frames (RFC 7741, RFC 6184, RFC 7587).

Packets come as a viewer receives them: in the order they reached the SFU,
which on a publisher's real network is not always the order they were sent,
and with a lost packet arriving late when the SFU's NACK brought it back over
RTX. :class:`ReorderBuffer` puts them back in sequence order, holding what
comes after a hole for up to ``REORDER_WAIT`` for the hole to fill.

A frame is every packet of one RTP timestamp; it is complete at the marker
bit (video) or at once (Opus). A frame with a hole that never filled is
dropped, and video then waits for the next keyframe (``needs_keyframe`` tells
the recorder to ask for one), so that the file never holds a frame that
refers to a lost one.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor

H264_IDR = 5
H264_SPS = 7
H264_PPS = 8

# A publisher's repair takes the SFU's NACK and the resend one round trip each
# way (tens to a few hundred milliseconds on a phone's network); a file is
# never late, so a hole may wait longer than a live viewer's jitter buffer would.
REORDER_WAIT = 0.5  # seconds a packet after a hole waits for it
REORDER_LIMIT = 1024  # packets held at most (2 s of 5 Mbit/s video); past it the hole is given up
MAX_HOLES = 128  # missing numbers listed at one arrival (as many as one NACK names)


@dataclass(frozen=True)
class EncodedFrame:
    timestamp: int  # RTP timestamp of the frame
    data: bytes  # VP8 frame, Annex B H.264 access unit, or one Opus packet
    keyframe: bool


def annexb_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B buffer (start codes of 3 or 4 bytes dropped)."""
    units: list[bytes] = []
    starts: list[tuple[int, int]] = []  # (start code position, payload start)
    i, n = 0, len(data)
    while i + 2 < n:
        if data[i] == 0 and data[i + 1] == 0 and data[i + 2] == 1:
            code = i - 1 if i > 0 and data[i - 1] == 0 else i
            starts.append((code, i + 3))
            i += 3
        else:
            i += 1
    for k, (_, begin) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else n
        if end > begin:
            units.append(data[begin:end])
    return units


class ReorderBuffer:
    """One track's packets in sequence order. A packet after a hole is held
    until the hole fills (a reordered packet, or the publisher's RTX repair of
    a lost one) or until the first packet held has waited ``wait`` seconds;
    then the hole is given up, and :class:`FrameAssembler` sees a loss.
    ``holes`` lists the sequence numbers found missing since the caller last
    emptied it (it may ask for them again)."""

    def __init__(self, wait: float = REORDER_WAIT, limit: int = REORDER_LIMIT) -> None:
        self.wait, self.limit = wait, limit
        self.holes: list[int] = []
        self._next: int | None = None  # the sequence number due next
        self._top: int | None = None  # the furthest sequence number seen past a hole
        # seq -> (packet, arrival), in the order they arrived: the first one has waited longest
        self._held: dict[int, tuple[bytes, float]] = {}

    def push(self, packet: bytes, now: float) -> list[bytes]:
        """One packet as it arrived; the packets now due, in sequence order."""
        if len(packet) < 12:
            return []
        seq = (packet[2] << 8) | packet[3]
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) & 0xFFFF
        if ahead == 0 and not self._held:  # in order, nothing waiting: the usual case
            self._next = (seq + 1) & 0xFFFF
            return [packet]
        if ahead >= 0x8000:
            return []  # late or a duplicate: its hole was given up, or it came already
        out: list[bytes] = []
        if ahead > self.limit:  # a jump, not a hole: what is held goes out, the count starts over
            out = self.flush()
            self._next, self._top, ahead = seq, None, 0
        top = (self._top - self._next) & 0xFFFF if self._top is not None else 0xFFFF
        if top >= 0x8000:
            top = -1  # nothing seen past the next one due
        if ahead > top:  # the furthest yet: the numbers between are newly missing
            due = self._next
            self.holes.extend((due + i) & 0xFFFF for i in range(max(top + 1, ahead - MAX_HOLES), ahead))
            self._top = seq
        self._held.setdefault(seq, (packet, now))
        out += self._release()
        while self._held and (now - next(iter(self._held.values()))[1] >= self.wait
                              or len(self._held) > self.limit):
            self._skip()
            out += self._release()
        return out

    def flush(self) -> list[bytes]:
        """Everything held, in order, giving up its holes (the recording ends)."""
        out: list[bytes] = []
        while self._held:
            self._skip()
            out += self._release()
        return out

    def reset(self) -> None:
        self._next, self._top, self._held, self.holes = None, None, {}, []

    def _release(self) -> list[bytes]:
        out: list[bytes] = []
        assert self._next is not None
        while self._next in self._held:
            out.append(self._held.pop(self._next)[0])
            self._next = (self._next + 1) & 0xFFFF
        return out

    def _skip(self) -> None:
        """Give up the hole before the nearest held packet."""
        due = self._next
        assert due is not None
        self._next = min(self._held, key=lambda seq: (seq - due) & 0xFFFF)


class FrameAssembler:
    """One track's RTP packets into :class:`EncodedFrame` objects."""

    def __init__(self, codec_name: str) -> None:
        self.codec = codec_name.lower()
        self.video = self.codec in ("vp8", "h264")
        self.needs_keyframe = self.video
        self.dropped_frames = 0
        self._parts: list[bytes] = []
        self._timestamp: int | None = None
        self._next_seq: int | None = None
        self._broken = False

    def push(self, packet: bytes) -> EncodedFrame | None:
        """One RTP packet; the frame it completes, if any."""
        if len(packet) < 12:
            return None
        b0 = packet[0]
        hlen = 12 + ((b0 & 0x0F) << 2)
        if b0 & 0x10:
            if len(packet) < hlen + 4:
                return None
            hlen += 4 + (((packet[hlen + 2] << 8) | packet[hlen + 3]) << 2)
        end = len(packet)
        if b0 & 0x20:  # padding
            end -= packet[-1]
        seq = (packet[2] << 8) | packet[3]
        timestamp = int.from_bytes(packet[4:8], "big")
        marker = bool(packet[1] & 0x80)
        payload = packet[hlen:end]

        gap = self._next_seq is not None and seq != self._next_seq
        if gap and ((seq - self._next_seq) & 0xFFFF) >= 0x8000:  # type: ignore[operator]
            return None  # late or duplicate: already past it
        self._next_seq = (seq + 1) & 0xFFFF

        if not self.video:
            return EncodedFrame(timestamp, payload, True) if end > hlen else None

        if gap:  # whatever was lost, the next frames may refer to it
            self.dropped_frames += 1
            self.needs_keyframe = True
        if end <= hlen:
            # padding only (a sender's probe in its media stream): it took a sequence
            # number and carries nothing; a hole before it breaks the frame under way
            self._broken = self._broken or (gap and bool(self._parts))
            return None
        if timestamp != self._timestamp:
            if self._parts:  # the previous frame never saw its marker
                self._drop()
            self._parts, self._timestamp, self._broken = [], timestamp, False
        elif gap:
            self._broken = True
        try:
            self._parts.append(self._depayload(payload, starts_frame=not self._parts))
        except ValueError:
            self._broken = True
        if not marker:
            return None
        return self._finish(timestamp)

    def _depayload(self, payload: bytes, *, starts_frame: bool) -> bytes:
        if self.codec == "vp8":
            descriptor, data = VpxPayloadDescriptor.parse(payload)
            if starts_frame and not (descriptor.partition_start and descriptor.partition_id == 0):
                self._broken = True  # the frame's first packet is missing
            return data
        descriptor, data = H264PayloadDescriptor.parse(payload)
        if starts_frame and not descriptor.first_fragment:
            self._broken = True
        return data

    def _finish(self, timestamp: int) -> EncodedFrame | None:
        parts, broken = self._parts, self._broken
        self._parts, self._timestamp, self._broken = [], None, False
        if broken or not parts:
            self._drop()
            return None
        data = b"".join(parts)
        keyframe = self._is_keyframe(data)
        if self.needs_keyframe and not keyframe:
            self.dropped_frames += 1
            return None
        self.needs_keyframe = False
        return EncodedFrame(timestamp, data, keyframe)

    def _drop(self) -> None:
        self.dropped_frames += 1
        self.needs_keyframe = True
        self._parts = []

    def _is_keyframe(self, data: bytes) -> bool:
        if self.codec == "vp8":
            return bool(data) and not (data[0] & 0x01)
        return any(unit[0] & 0x1F == H264_IDR for unit in annexb_units(data))

    def reset(self) -> None:
        """A new source (the publisher came back): forget the sequence, wait for a keyframe."""
        self._parts, self._timestamp, self._next_seq, self._broken = [], None, None, False
        self.needs_keyframe = self.video


def vp8_dimensions(keyframe: bytes) -> tuple[int, int]:
    """Width and height from a VP8 keyframe's header (RFC 6386 section 9.1)."""
    if len(keyframe) < 10 or keyframe[3:6] != b"\x9d\x01\x2a":
        raise ValueError("not a VP8 keyframe")
    width = int.from_bytes(keyframe[6:8], "little") & 0x3FFF
    height = int.from_bytes(keyframe[8:10], "little") & 0x3FFF
    return width, height


def h264_parameter_sets(access_unit: bytes) -> bytes:
    """The SPS and PPS of an access unit, as Annex B (the MP4 muxer's extradata)."""
    return b"".join(
        b"\x00\x00\x00\x01" + unit
        for unit in annexb_units(access_unit)
        if unit[0] & 0x1F in (H264_SPS, H264_PPS)
    )


class _Bits:
    """An RBSP (emulation prevention removed) read bit by bit, with Exp-Golomb codes."""

    def __init__(self, nal: bytes) -> None:
        self.data = nal.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]  # IndexError at the end: a truncated SPS
        self.pos += 1
        return (byte >> (7 - ((self.pos - 1) & 7))) & 1

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


_HIGH_PROFILES = (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135)


def h264_dimensions(access_unit: bytes) -> tuple[int, int]:
    """Width and height from the SPS of an access unit (ITU-T H.264 7.3.2.1.1)."""
    sps = next((u for u in annexb_units(access_unit) if u[0] & 0x1F == H264_SPS), None)
    if sps is None:
        raise ValueError("no SPS in the access unit")
    try:
        return _sps_dimensions(_Bits(sps[1:]))
    except IndexError:
        raise ValueError("truncated SPS") from None


def _sps_dimensions(r: _Bits) -> tuple[int, int]:
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma_format = 1
    if profile in _HIGH_PROFILES:
        chroma_format = r.ue()
        if chroma_format == 3:
            r.bit()
        r.ue()
        r.ue()
        r.bit()
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format != 3 else 12):
                if r.bit():
                    last = next_scale = 8
                    for _ in range(16 if i < 6 else 64):
                        if next_scale:
                            next_scale = (last + r.se() + 256) % 256
                        last = next_scale or last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()
    r.bit()
    width, height = width_mbs * 16, (2 - frame_mbs_only) * height_units * 16
    if r.bit():  # frame_cropping_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        unit_x = 1 if chroma_format in (0, 3) else 2
        unit_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    return width, height
