"""The bench's simulcast publisher (``bench.fanout --simulcast``): aiortc
cannot send rids, so this one negotiates with an aiortc peer connection whose
offer gets the lines a browser's ``sendEncodings`` would add (``a=rid``,
``a=simulcast``, the rtp-stream-id extension), sends Opus through aiortc, and
writes the video RTP itself on the connection's DTLS transport: three
pre-encoded VP8 clips (180, 360 and 720 lines), each its own SSRC, sequence
numbers, timestamps, 15-bit picture ids and TL0PICIDX, with the mid and
rtp-stream-id extensions on every packet. A PLI for a layer's SSRC restarts
that layer's clip at its keyframe, as an encoder would answer it."""

from __future__ import annotations

import asyncio
import random
import re
import struct

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket
from yarl import URL

from .media_clip import EncodedFrame, VideoSpec, video_clip
from .session_url import delete_session
from .whip_publisher import LoopedClipTrack

LAYERS = (
    ("q", VideoSpec(width=320, height=180, bitrate=150_000)),
    ("h", VideoSpec(width=640, height=360, bitrate=500_000)),
    ("f", VideoSpec()),
)
RID_EXT_ID = 10
CHUNK = 1100


class _Silent(MediaStreamTrack):
    """The video transceiver's track: never yields, so aiortc sends no video itself."""

    kind = "video"

    async def recv(self):  # noqa: ANN201 - never returns
        await asyncio.Event().wait()


class LayerWriter:
    """One simulcast layer's RTP stream."""

    def __init__(self, rid: str, frames: list[EncodedFrame], fps: int) -> None:
        self.rid = rid
        self.frames = frames
        self.ssrc = random.randint(1, 0xFFFFFFFE)
        self.step = 90000 // fps
        self.keyframe_requests = 0
        self._seq = random.randint(0, 0xFFFF)
        self._ts = random.randint(0, 0xFFFFFFFF)
        self._picture_id = random.randint(0, 0x7FFF)
        self._tl0 = random.randint(0, 0xFF)
        self._index = 0

    def restart(self) -> None:
        self.keyframe_requests += 1
        self._index = 0

    def next_packets(self, pt: int, extensions: bytes) -> list[bytes]:
        data = self.frames[self._index].data
        self._index = (self._index + 1) % len(self.frames)
        chunks = [data[k : k + CHUNK] for k in range(0, len(data), CHUNK)]
        packets = []
        for k, chunk in enumerate(chunks):
            marker = 0x80 if k == len(chunks) - 1 else 0
            header = struct.pack("!BBHII", 0x90, marker | pt, self._seq, self._ts, self.ssrc)
            descriptor = bytes((
                0x90 if k == 0 else 0x80,  # X, S on the first packet, partition 0
                0xC0,  # I and L
                0x80 | (self._picture_id >> 8), self._picture_id & 0xFF,
                self._tl0,
            ))
            packets.append(header + extensions + descriptor + chunk)
            self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + self.step) & 0xFFFFFFFF
        self._picture_id = (self._picture_id + 1) & 0x7FFF
        self._tl0 = (self._tl0 + 1) & 0xFF
        return packets


class SimulcastWhipPublisher:
    def __init__(self, audio: list[EncodedFrame]) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location: str | None = None
        self.connected = asyncio.Event()
        self.specs = [spec for _, spec in LAYERS]
        self.layers = [LayerWriter(rid, video_clip(spec), spec.fps) for rid, spec in LAYERS]
        self.tracks = [LoopedClipTrack("audio", audio, fps=50)]
        self.pc.addTransceiver(self.tracks[0], direction="sendonly")
        self.video = self.pc.addTransceiver(_Silent(), direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video")
        self.video.setCodecPreferences([c for c in caps.codecs if c.mimeType == "video/VP8"])
        self._task: asyncio.Task[None] | None = None
        self._pt = 0
        self._rid_values = b""  # the mid extension element, from the offer

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()

    @property
    def keyframe_requests(self) -> int:
        return sum(layer.keyframe_requests for layer in self.layers)

    def _offer(self, sdp: str) -> str:
        head, _, video = sdp.partition("m=video")
        lines = video.split("\r\n")
        at = next(i for i, line in enumerate(lines) if line.startswith("a=mid:"))
        rids = [layer.rid for layer in self.layers]
        lines[at + 1 : at + 1] = [
            f"a=extmap:{RID_EXT_ID} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            *[f"a=rid:{rid} send" for rid in rids],
            "a=simulcast:send " + ";".join(rids),
        ]
        text = "\r\n".join(lines)
        self._pt = int(re.search(r"a=rtpmap:(\d+) VP8/90000", text).group(1))  # type: ignore[union-attr]
        mid_ext = re.search(r"a=extmap:(\d+) urn:ietf:params:rtp-hdrext:sdes:mid", text)
        mid = self.video.mid or "1"
        values = b""
        if mid_ext:
            values += bytes(((int(mid_ext.group(1)) << 4) | (len(mid) - 1),)) + mid.encode()
        self._rid_values = values
        return head + "m=video" + text

    def _extensions_for(self, rid: str) -> bytes:
        values = self._rid_values + bytes(((RID_EXT_ID << 4) | (len(rid) - 1),)) + rid.encode()
        values += bytes(-len(values) % 4)
        return struct.pack("!HH", 0xBEDE, len(values) // 4) + values

    async def start(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self._offer(self.pc.localDescription.sdp)
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with http.post(url, data=offer, headers=headers) as response:
            text = await response.text()
            if response.status != 201:
                raise RuntimeError(f"WHIP POST {url}: HTTP {response.status}: {text[:300]}")
            location = response.headers.get("Location", "")
        self.location = str(response.url.join(URL(location))) if location else None
        await self.pc.setRemoteDescription(RTCSessionDescription(text, "answer"))
        transport = self.video.sender.transport
        sink = _KeyframeRequests(self.layers)
        for layer in self.layers:
            transport._rtp_router.register_sender(sink, layer.ssrc)
        self._task = asyncio.create_task(self._send())

    async def _send(self) -> None:
        await self.connected.wait()
        transport = self.video.sender.transport
        extensions = [self._extensions_for(layer.rid) for layer in self.layers]
        loop = asyncio.get_running_loop()
        fps = self.specs[0].fps
        start = loop.time()
        n = 0
        while True:
            for layer, ext in zip(self.layers, extensions, strict=True):
                for packet in layer.next_packets(self._pt, ext):
                    await transport._send_rtp(packet)
            n += 1
            await asyncio.sleep(max(0.0, start + n / fps - loop.time()))

    async def stop(self, http: aiohttp.ClientSession | None, token: str | None) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await delete_session(http, self.location, token)
        await self.pc.close()


class _KeyframeRequests:
    """Where aiortc's RTCP router delivers feedback about our layer SSRCs."""

    def __init__(self, layers: list[LayerWriter]) -> None:
        self.layers = layers

    async def _handle_rtcp_packet(self, packet: object) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            for layer in self.layers:
                if layer.ssrc == packet.media_ssrc:
                    layer.restart()


__all__ = ["LAYERS", "SimulcastWhipPublisher"]
