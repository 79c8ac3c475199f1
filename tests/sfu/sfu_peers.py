"""aiortc client peers for the sfu/ tests: a publisher that sends pre-encoded
frames, and viewers whose receivers record what they get (RTP payloads and
reassembled encoded frames) before their decoder sees it."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket, is_rtcp

from .sfu_media import EncodedFrame


def client_pc() -> RTCPeerConnection:
    # no STUN server: nothing leaves the machine
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded frames as av.Packets at their real-time pace; after a
    keyframe request (PLI/FIR seen by its sender) the next frame sent is the
    first frame of the list, a keyframe."""

    def __init__(self, kind: str, frames: list[EncodedFrame], *, fps: float = 30.0) -> None:
        super().__init__()
        self.kind = kind
        self.frames = frames
        self.sent: list[bytes] = []
        self.keyframe_requests = 0
        self._force_keyframe = False
        self._i = 0
        self._start: float | None = None
        if kind == "audio":
            self._step, self._time_base, self._interval = 960, Fraction(1, 48000), 0.02
        else:
            self._step, self._time_base, self._interval = 3000, Fraction(1, 90000), 1 / fps

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._force_keyframe = True

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        n = len(self.sent)
        wait = self._start + n * self._interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self._force_keyframe:
            self._force_keyframe = False
            self._i = 0
        frame = self.frames[self._i % len(self.frames)]
        self._i += 1
        if self._i >= len(self.frames):
            self._i = 1  # loop over the delta frames, never resend the keyframe unasked
        packet = av.Packet(frame.data)
        packet.pts = n * self._step
        packet.time_base = self._time_base
        self.sent.append(frame.data)
        return packet


def _watch_keyframe_requests(sender: RTCRtpSender, track: PacketTrack) -> None:
    handle = sender._handle_rtcp_packet

    async def _handle_rtcp_packet(packet) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            track.request_keyframe()
        await handle(packet)

    sender._handle_rtcp_packet = _handle_rtcp_packet


def _record_sent_payloads(sender: RTCRtpSender, out: list[bytes]) -> None:
    transport = sender.transport
    if getattr(transport, "_sfu_test_tap", None) is not None:
        transport._sfu_test_tap.append(out)
        return
    taps = [out]
    transport._sfu_test_tap = taps
    send = transport._send_rtp

    async def _send_rtp(data: bytes) -> None:
        if not is_rtcp(data):
            payload = RtpPacket.parse(data).payload
            for t in taps:
                t.append(payload)
        await send(data)

    transport._send_rtp = _send_rtp


class Publisher:
    def __init__(self, tracks: list[PacketTrack], codec_prefs: dict[str, list] | None = None):
        self.pc = client_pc()
        self.tracks = tracks
        self.sent_payloads: list[bytes] = []
        self.senders = []
        for track in tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            if codec_prefs and track.kind in codec_prefs:
                transceiver.setCodecPreferences(codec_prefs[track.kind])
            self.senders.append(transceiver.sender)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        for sender, track in zip(self.senders, self.tracks, strict=True):
            _watch_keyframe_requests(sender, track)
            _record_sent_payloads(sender, self.sent_payloads)

    async def close(self) -> None:
        await self.pc.close()


def drop_rtp(ice, drop) -> None:
    """``ice`` (an aioice connection) loses every RTP packet (before SRTP) for which
    ``drop(ssrc, seq)`` is true; RTCP and everything else gets through."""
    recv = ice._recv

    async def lossy_recv() -> bytes:
        while True:
            data = await recv()
            if len(data) >= 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223:
                if drop(int.from_bytes(data[8:12], "big"), (data[2] << 8) | data[3]):
                    continue
            return data

    ice._recv = lossy_recv


def lose_every_sixth(session, media_ssrc: int, rtx_ssrc: int, count: int):
    """``session``'s network loses every 6th packet of ``media_ssrc`` (``count``
    of them, first transmissions only) and counts what arrives on ``rtx_ssrc``."""
    dropped: set[int] = set()
    rtx_seen: list[int] = []

    def drop(ssrc: int, seq: int) -> bool:
        if ssrc == rtx_ssrc:
            rtx_seen.append(seq)
        elif ssrc == media_ssrc and seq % 6 == 1 and len(dropped) < count:
            dropped.add(seq)
            return True
        return False

    drop_rtp(session.ice, drop)
    return dropped, rtx_seen


class Viewer:
    """Receives; records RTP payloads and reassembled encoded frames by kind."""

    def __init__(self, kinds: tuple[str, ...] = ("video",)) -> None:
        self.pc = client_pc()
        self.payloads: dict[str, list[bytes]] = {k: [] for k in kinds}
        self.frames: dict[str, list[tuple[float, bytes]]] = {k: [] for k in kinds}
        self.transceivers = [self.pc.addTransceiver(k, direction="recvonly") for k in kinds]
        self.connected = asyncio.Event()
        self.closed_by_server = asyncio.Event()

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()
            elif self.pc.connectionState in ("closed", "failed"):
                self.closed_by_server.set()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        for t in self.transceivers:
            self._tap(t.receiver, t.kind)

    def _tap(self, receiver, kind: str) -> None:
        frames = self.frames[kind]
        jitter_buffer = receiver._RTCRtpReceiver__jitter_buffer
        add = jitter_buffer.add

        def add_and_record(packet):
            pli, frame = add(packet)
            if frame is not None:
                frames.append((time.monotonic(), bytes(frame.data)))
            return pli, frame

        jitter_buffer.add = add_and_record
        payloads = self.payloads[kind]
        handle = receiver._handle_rtp_packet

        async def _handle_rtp_packet(packet, arrival_time_ms):
            payloads.append(packet.payload)
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = _handle_rtp_packet

    async def close(self) -> None:
        await self.pc.close()


async def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def vp8_keyframe(data: bytes) -> bool:
    return bool(data) and (data[0] & 0x01) == 0
