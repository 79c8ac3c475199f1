"""A simulcast publisher for the sfu/ tests. aiortc cannot send rids, so this
one negotiates with an aiortc peer connection (its offer gets the rid lines a
browser's would have) and then writes VP8 or H.264 RTP itself on the
connection's DTLS transport: three layers, each its own SSRC, sequence
numbers, timestamps and (VP8) picture ids, with the rtp-stream-id and mid
header extensions on every packet; a PLI for a layer's SSRC restarts that
layer at its keyframe."""

from __future__ import annotations

import asyncio
import random
import re
import struct

from aiortc import RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RtcpPsfbPacket,
    pack_remb_fci,
)

from .sfu_media import EncodedFrame, nal_units
from .sfu_peers import PacketTrack, client_pc, wait_for

RID_EXT_ID = 10
MID_EXT_ID = 11
CHUNK = 900


class _Silent(MediaStreamTrack):
    """A video track that never yields a frame: aiortc's own sender stays quiet."""

    kind = "video"

    async def recv(self):  # noqa: ANN201
        await asyncio.Event().wait()


def h264_payloads(data: bytes) -> list[bytes]:
    """An Annex B access unit as RTP payloads (RFC 6184): single NAL units, FU-A above CHUNK."""
    out = []
    for nal in nal_units(data):
        if len(nal) <= CHUNK:
            out.append(nal)
            continue
        body = nal[1:]
        for k in range(0, len(body), CHUNK):
            start, end = k == 0, k + CHUNK >= len(body)
            fu = (0x80 if start else 0) | (0x40 if end else 0) | (nal[0] & 0x1F)
            out.append(bytes([(nal[0] & 0xE0) | 28, fu]) + body[k : k + CHUNK])
    return out


class LayerStream:
    def __init__(self, rid: str, frames: list[EncodedFrame], index: int, codec: str) -> None:
        self.rid = rid
        self.codec = codec
        self.frames = frames
        self.ssrc = random.randint(1, 0xFFFFFFFE)
        self.seq = random.randint(0, 0xFFFF)
        self.ts = random.randint(0, 0xFFFFFFFF)
        self.picture_id = (index * 9000 + random.randint(0, 1000)) & 0x7FFF
        self.tl0 = random.randint(0, 255)
        self.i = 0
        self.keyframe_requests = 0
        # every payload (VP8: after its descriptor) this layer may send
        self.chunks: set[bytes] = set()
        for frame in frames:
            if codec == "h264":
                self.chunks.update(h264_payloads(frame.data))
            else:
                for k in range(0, len(frame.data), CHUNK):
                    self.chunks.add(frame.data[k : k + CHUNK])

    def next_frame(self) -> EncodedFrame:
        frame = self.frames[self.i % len(self.frames)]
        self.i += 1
        if self.i >= len(self.frames):
            self.i = 1  # loop over delta frames; a keyframe only when asked
        return frame

    def packets(self, mid: str, pt: int) -> list[bytes]:
        frame = self.next_frame()
        data = frame.data
        if self.codec == "h264":
            chunks = h264_payloads(data)
        else:
            chunks = [data[k : k + CHUNK] for k in range(0, len(data), CHUNK)]
        rid = self.rid.encode()
        ext = bytes([(RID_EXT_ID << 4) | (len(rid) - 1)]) + rid
        ext += bytes([(MID_EXT_ID << 4) | (len(mid) - 1)]) + mid.encode()
        ext += bytes(-len(ext) % 4)
        out = []
        for k, chunk in enumerate(chunks):
            last = k == len(chunks) - 1
            header = struct.pack(
                "!BBHII", 0x90, (0x80 if last else 0) | pt, self.seq, self.ts, self.ssrc
            )
            header += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
            descriptor = b""
            if self.codec == "vp8":
                descriptor = bytes(
                    [
                        0x80 | (0x10 if k == 0 else 0),
                        0xC0,
                        0x80 | (self.picture_id >> 8),
                        self.picture_id & 0xFF,
                        self.tl0,
                    ]
                )
            out.append(header + descriptor + chunk)
            self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 3000) & 0xFFFFFFFF
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.tl0 = (self.tl0 + 1) & 0xFF
        return out


class SimulcastPublisher:
    """Video in three layers (rids q, h, f: low to high) and, optionally, aiortc audio."""

    def __init__(
        self,
        layers: list[list[EncodedFrame]],
        audio: list[EncodedFrame] | None = None,
        codec: str = "vp8",
    ):
        self.pc = client_pc()
        self.codec = codec
        self.layers = [LayerStream(rid, frames, i, codec) for i, (rid, frames) in
                       enumerate(zip(("q", "h", "f"), layers, strict=True))]
        self.audio = PacketTrack("audio", audio) if audio else None
        if self.audio is not None:
            self.pc.addTransceiver(self.audio, direction="sendonly")
        self.video = self.pc.addTransceiver(_Silent(), direction="sendonly")
        if codec == "h264":
            self.video.setCodecPreferences(
                [
                    c
                    for c in RTCRtpSender.getCapabilities("video").codecs
                    if c.mimeType == "video/H264"
                    and c.parameters.get("profile-level-id") == "42e01f"
                ]
            )
        self._task: asyncio.Task[None] | None = None
        self.mid = ""
        self.pt = 0

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        self.mid = self.video.mid
        name = "H264" if self.codec == "h264" else "VP8"
        self.pt = int(re.search(rf"a=rtpmap:(\d+) {name}/90000", sdp).group(1))
        head, _, video = sdp.partition("m=video")
        lines = video.split("\r\n")
        at = next(i for i, line in enumerate(lines) if line.startswith("a=mid:"))
        rids = [layer.rid for layer in self.layers]
        extra = [
            f"a=extmap:{RID_EXT_ID} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            *[f"a=rid:{rid} send" for rid in rids],
            "a=simulcast:send " + ";".join(rids),
        ]
        lines[at + 1 : at + 1] = extra
        # our mid extension id for the video section
        lines = [
            line.replace("a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
                         f"a=extmap:{MID_EXT_ID} urn:ietf:params:rtp-hdrext:sdes:mid")
            for line in lines
        ]
        return head + "m=video" + "\r\n".join(lines)

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        transport = self.video.sender.transport
        sink = _FeedbackSink(self)
        for layer in self.layers:
            transport._rtp_router.register_sender(sink, layer.ssrc)
        transport._rtp_router.register_sender(sink, 0)
        self._task = asyncio.create_task(self._send())

    async def _send(self) -> None:
        transport = self.video.sender.transport
        await wait_for(lambda: transport.state == "connected", 10)
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while True:
            for layer in self.layers:
                for packet in layer.packets(self.mid, self.pt):
                    await transport._send_rtp(packet)
            n += 1
            await asyncio.sleep(max(0.0, start + n / 30 - loop.time()))

    def layer_of(self, payload: bytes) -> int | None:
        """Which layer a forwarded payload (VP8: after its 5-byte descriptor) came from."""
        data = payload if self.codec == "h264" else payload[5:]
        found = [i for i, layer in enumerate(self.layers) if data in layer.chunks]
        return found[0] if len(found) == 1 else None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.pc.close()


class _FeedbackSink:
    def __init__(self, publisher: SimulcastPublisher) -> None:
        self.publisher = publisher

    async def _handle_rtcp_packet(self, packet) -> None:  # noqa: ANN001
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            for layer in self.publisher.layers:
                if layer.ssrc == packet.media_ssrc:
                    layer.keyframe_requests += 1
                    layer.i = 0


def quiet_remb(receiver) -> None:  # noqa: ANN001
    """Stop an aiortc receiver's own REMB, so that a test's REMB is the only one."""
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None


async def send_remb(receiver, bitrate: int) -> None:  # noqa: ANN001
    """REMB from an aiortc viewer's connection, as a browser sends it."""
    packet = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP, ssrc=1234, media_ssrc=0, fci=pack_remb_fci(bitrate, [])
    )
    await receiver.transport._send_rtp(bytes(packet))


__all__ = ["SimulcastPublisher", "quiet_remb", "send_remb"]
