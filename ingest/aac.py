"""AAC from FLV to Opus RTP: the one thing the ingest transcodes.

Browsers' WebRTC has no AAC decoder, so each AAC frame is decoded (PyAV),
resampled to 48 kHz stereo and encoded to Opus in 20 ms frames, each one
RTP packet (RFC 7587). RTP timestamps count samples from the first AAC
frame's FLV time, so audio keeps its place against the video's timestamps.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from fractions import Fraction

import av
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

OPUS_RATE = 48000
OPUS_FRAME = 960  # 20 ms
OPUS_BITRATE = 64_000
PAYLOAD_TYPE = 111


class UnsupportedAudio(ValueError):
    """Audio we cannot turn into Opus; the message is for the broadcaster."""


def opus_codec() -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=OPUS_RATE, channels=2, payloadType=PAYLOAD_TYPE,
        parameters={"minptime": "10", "useinbandfec": "1"},
    )


class AacToOpus:
    """Raw AAC frames (after the AudioSpecificConfig) in, Opus RTP packets out."""

    def __init__(self, audio_specific_config: bytes, *, ssrc: int | None = None) -> None:
        if not audio_specific_config:
            raise UnsupportedAudio("the AAC sequence header has no AudioSpecificConfig")
        self._decoder = av.CodecContext.create("aac", "r")
        self._decoder.extradata = audio_specific_config
        self._resampler = av.AudioResampler(
            format="s16", layout="stereo", rate=OPUS_RATE, frame_size=OPUS_FRAME
        )
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = OPUS_RATE
        encoder.layout = "stereo"
        encoder.format = "s16"
        encoder.bit_rate = OPUS_BITRATE
        encoder.time_base = Fraction(1, OPUS_RATE)
        self._encoder = encoder
        self.ssrc = ssrc if ssrc is not None else random.randint(1, 0xFFFFFFFE)
        self._seq = random.randint(0, 0xFFFF)
        self._ts_base = random.randint(0, 0xFFFFFFFF)
        self._start_ms: int | None = None
        self._samples = 0
        self.decode_errors = 0

    def transcode(self, aac_frame: bytes, flv_ms: int) -> Iterator[bytes]:
        """Opus RTP packets for whatever this AAC frame completes."""
        if self._start_ms is None:
            self._start_ms = flv_ms
        try:
            frames = self._decoder.decode(av.Packet(aac_frame))
        except av.FFmpegError:
            self.decode_errors += 1
            return
        for frame in frames:
            for pcm in self._resampler.resample(frame):
                pcm.pts = self._samples
                self._samples += pcm.samples
                for packet in self._encoder.encode(pcm):
                    yield self._packet(bytes(packet), packet.pts or 0)

    def _packet(self, payload: bytes, pts: int) -> bytes:
        assert self._start_ms is not None
        ts = (self._ts_base + self._start_ms * (OPUS_RATE // 1000) + pts) & 0xFFFFFFFF
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        # marker set on every packet, as aiortc does: each is a whole frame, and
        # the up track starts a new subscriber after a packet with the marker
        header = bytes([0x80, 0x80 | PAYLOAD_TYPE, seq >> 8, seq & 0xFF])
        return header + ts.to_bytes(4, "big") + self.ssrc.to_bytes(4, "big") + payload


__all__ = ["AacToOpus", "UnsupportedAudio", "opus_codec"]
