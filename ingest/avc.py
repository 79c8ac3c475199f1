"""H.264 from FLV to RTP: the decoder configuration, what browsers can play,
and packetization mode 1 (RFC 6184: single NAL unit, STAP-A, FU-A).

The video is never decoded or re-encoded: each FLV access unit's NAL units
(length-prefixed, AVCC) become RTP payloads as they are. Keyframes (an IDR
slice) are preceded by a STAP-A with the SPS and PPS of the sequence header,
so that a viewer joining at any keyframe can decode.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters

NAL_IDR, NAL_SPS, NAL_PPS, NAL_AUD = 5, 7, 8, 9
STAP_A, FU_A = 24, 28
MAX_PAYLOAD = 1200  # RTP payload bytes: fits a 1280-byte path MTU after SRTP and UDP/IP
PAYLOAD_TYPE = 102
CLOCK_RATE = 90000

# profile_idc a browser's WebRTC decoder takes, with the profile-level-id
# prefix we announce: constrained baseline when constraint_set1 is set.
BASELINE, MAIN, HIGH = 66, 77, 100


class UnsupportedVideo(ValueError):
    """Video a browser cannot play as we would forward it; the message says
    what to change, for the broadcaster's log."""


@dataclass(frozen=True)
class AvcConfig:
    profile_idc: int
    constraints: int
    level_idc: int
    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    @property
    def profile_level_id(self) -> str:
        """The SDP ``profile-level-id``, profile and iop as browsers name them."""
        if self.profile_idc == BASELINE:
            prefix = "42e0" if self.constraints & 0x40 else "4200"
        else:
            prefix = "4d00"
        return f"{prefix}{self.level_idc:02x}"

    def codec(self) -> RTCRtpCodecParameters:
        feedback = [RTCRtcpFeedback(type="nack"), RTCRtcpFeedback(type="nack", parameter="pli"),
                    RTCRtcpFeedback(type="ccm", parameter="fir")]
        return RTCRtpCodecParameters(
            mimeType="video/H264", clockRate=CLOCK_RATE, payloadType=PAYLOAD_TYPE,
            rtcpFeedback=feedback,
            parameters={"packetization-mode": "1", "level-asymmetry-allowed": "1",
                        "profile-level-id": self.profile_level_id},
        )


def profile_name(profile_idc: int) -> str:
    names = {66: "Baseline", 77: "Main", 88: "Extended", 100: "High", 110: "High 10",
             122: "High 4:2:2", 244: "High 4:4:4"}
    return names.get(profile_idc, f"profile_idc {profile_idc}")


def parse_avc_config(data: bytes) -> AvcConfig:
    """An AVCDecoderConfigurationRecord (ISO 14496-15), checked for what
    browsers decode: Baseline or Main profile."""
    if len(data) < 7 or data[0] != 1:
        raise UnsupportedVideo("malformed H.264 sequence header (AVCDecoderConfigurationRecord)")
    profile, constraints, level = data[1], data[2], data[3]
    length_size = (data[4] & 0x03) + 1
    pos = 5
    sps: list[bytes] = []
    pps: list[bytes] = []
    for target, mask in ((sps, 0x1F), (pps, 0xFF)):
        if pos >= len(data):
            raise UnsupportedVideo("malformed H.264 sequence header: parameter sets cut short")
        count = data[pos] & mask
        pos += 1
        for _ in range(count):
            if pos + 2 > len(data):
                raise UnsupportedVideo("malformed H.264 sequence header: parameter sets cut short")
            size = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            if size == 0 or pos + size > len(data):
                raise UnsupportedVideo("malformed H.264 sequence header: parameter sets cut short")
            target.append(bytes(data[pos : pos + size]))
            pos += size
    if not sps or not pps:
        raise UnsupportedVideo("the H.264 sequence header has no SPS or no PPS")
    if profile not in (BASELINE, MAIN):
        raise UnsupportedVideo(
            f"H.264 {profile_name(profile)} profile is refused: browsers' WebRTC decodes Baseline "
            "and Main only. Set the encoder profile to main or baseline (OBS: Output > x264 > "
            "Profile: main), B-frames 0, keyframe interval 1-2 s"
        )
    return AvcConfig(profile, constraints, level, length_size, tuple(sps), tuple(pps))


def split_nal_units(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of one FLV access unit (length-prefixed)."""
    units = []
    pos = 0
    while pos + length_size <= len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > len(data):
            raise UnsupportedVideo("malformed H.264 access unit (NAL unit length past its end)")
        units.append(data[pos : pos + size])
        pos += size
    return units


class H264Packetizer:
    """Access units to RTP packets (bytes), marker bit on the last packet of each."""

    def __init__(self, config: AvcConfig, *, ssrc: int | None = None) -> None:
        self.config = config
        self.ssrc = ssrc if ssrc is not None else random.randint(1, 0xFFFFFFFE)
        self._seq = random.randint(0, 0xFFFF)
        self._ts_base = random.randint(0, 0xFFFFFFFF)
        self._parameter_sets = self._stap_a(config.sps + config.pps)

    def reconfigure(self, config: AvcConfig) -> None:
        """A new sequence header (same profile): its parameter sets from now on."""
        self.config = config
        self._parameter_sets = self._stap_a(config.sps + config.pps)

    @staticmethod
    def _stap_a(units: tuple[bytes, ...]) -> bytes:
        nri = max(u[0] & 0x60 for u in units)
        return bytes([nri | STAP_A]) + b"".join(len(u).to_bytes(2, "big") + u for u in units)

    def packetize(self, units: list[bytes], pts_ms: int) -> Iterator[bytes]:
        """RTP packets for one access unit presented at ``pts_ms``."""
        payloads: list[bytes] = []
        types = {u[0] & 0x1F for u in units}
        if NAL_IDR in types and NAL_SPS not in types:
            payloads.append(self._parameter_sets)
        for unit in units:
            if unit[0] & 0x1F == NAL_AUD:
                continue  # access unit delimiters carry nothing a receiver needs
            if len(unit) <= MAX_PAYLOAD:
                payloads.append(unit)
            else:
                payloads.extend(_fu_a(unit))
        ts = (self._ts_base + pts_ms * (CLOCK_RATE // 1000)) & 0xFFFFFFFF
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            yield self._packet(payload, ts, marker=i == last)

    def _packet(self, payload: bytes, ts: int, *, marker: bool) -> bytes:
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        header = bytes([0x80, (0x80 if marker else 0) | PAYLOAD_TYPE, seq >> 8, seq & 0xFF])
        return header + ts.to_bytes(4, "big") + self.ssrc.to_bytes(4, "big") + payload


def _fu_a(unit: bytes) -> Iterator[bytes]:
    indicator = (unit[0] & 0xE0) | FU_A
    kind = unit[0] & 0x1F
    body = unit[1:]
    step = MAX_PAYLOAD - 2
    for pos in range(0, len(body), step):
        start = 0x80 if pos == 0 else 0
        end = 0x40 if pos + step >= len(body) else 0
        yield bytes([indicator, start | end | kind]) + body[pos : pos + step]


__all__ = ["AvcConfig", "H264Packetizer", "UnsupportedVideo", "parse_avc_config", "split_nal_units"]
