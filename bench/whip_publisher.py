"""The bench's publisher: an aiortc peer connection that sends a pre-encoded
clip over WHIP, packetized but never encoded (aiortc's sender packs
``av.Packet`` objects as they are). A keyframe request (PLI/FIR) makes the
next frame the clip's first keyframe, as a real encoder would answer it."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket
from yarl import URL

from .media_clip import EncodedFrame
from .session_url import delete_session


class LoopedClipTrack(MediaStreamTrack):
    """Plays pre-encoded frames in a loop at their real-time pace."""

    def __init__(self, kind: str, frames: list[EncodedFrame], *, fps: float) -> None:
        super().__init__()
        self.kind = kind
        self.frames = frames
        self.sent_frames = 0
        self.sent_bytes = 0
        self.keyframe_requests = 0
        self._index = 0
        self._start: float | None = None
        self._interval = 1.0 / fps
        if kind == "audio":
            self._step, self._time_base = 960, Fraction(1, 48000)
        else:
            self._step, self._time_base = int(90000 / fps), Fraction(1, 90000)

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._index = 0

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        n = self.sent_frames
        wait = self._start + n * self._interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = self.frames[self._index]
        self._index = (self._index + 1) % len(self.frames)
        packet = av.Packet(frame.data)
        packet.pts = n * self._step
        packet.time_base = self._time_base
        self.sent_frames += 1
        self.sent_bytes += len(frame.data)
        return packet


def _relay_keyframe_requests(sender: RTCRtpSender, track: LoopedClipTrack) -> None:
    handle = sender._handle_rtcp_packet

    async def _handle_rtcp_packet(packet) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            track.request_keyframe()
        await handle(packet)

    sender._handle_rtcp_packet = _handle_rtcp_packet


class WhipPublisher:
    def __init__(self, tracks: list[LoopedClipTrack]) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tracks = tracks
        self.location: str | None = None
        self.connected = asyncio.Event()
        self._senders: list[RTCRtpSender] = []
        for track in tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video":
                caps = RTCRtpSender.getCapabilities("video")
                transceiver.setCodecPreferences(
                    [c for c in caps.codecs if c.mimeType in ("video/VP8", "video/rtx")]
                )
            self._senders.append(transceiver.sender)

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()

    async def start(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with http.post(url, data=self.pc.localDescription.sdp, headers=headers) as response:
            text = await response.text()
            if response.status != 201:
                raise RuntimeError(f"WHIP POST {url}: HTTP {response.status}: {text[:300]}")
            location = response.headers.get("Location", "")
        self.location = str(response.url.join(URL(location))) if location else None
        await self.pc.setRemoteDescription(RTCSessionDescription(text, "answer"))
        for sender, track in zip(self._senders, self.tracks, strict=True):
            _relay_keyframe_requests(sender, track)

    async def stop(self, http: aiohttp.ClientSession | None, token: str | None) -> None:
        await delete_session(http, self.location, token)
        await self.pc.close()
