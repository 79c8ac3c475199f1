"""A cheap WHEP viewer: ICE and DTLS from aiortc's ORTC objects, then RTP
counted at the socket without decrypting.

SRTP encrypts the payload only; the RTP header (payload type, sequence
number, SSRC, marker) travels in the clear. Once DTLS is up, each datagram
that looks like RTP is counted straight from the UDP callback: packets and
bytes per track, loss from sequence gaps. Only video packets before the first
keyframe are decrypted, to find the VP8 keyframe start; after that nothing is
decrypted. RTCP, STUN and DTLS go on to aioice/aiortc as usual.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import sdp as aiortc_sdp
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci
from yarl import URL

from .session_url import delete_session

VIDEO_PT = 96
AUDIO_PT = 111
CONNECT_TIMEOUT = 15.0
REMB_INTERVAL = 0.5  # seconds between two REMBs of a viewer that reports a low bandwidth


class TrackCounter:
    """Packets, bytes and loss (from sequence gaps) of one received track."""

    __slots__ = ("packets", "octets", "first_seq", "max_seq", "cycles")

    def __init__(self) -> None:
        self.packets = 0
        self.octets = 0
        self.first_seq = -1
        self.max_seq = -1
        self.cycles = 0

    def on_packet(self, seq: int, size: int) -> None:
        self.packets += 1
        self.octets += size
        last = self.max_seq
        if last < 0:
            self.first_seq = self.max_seq = seq
            return
        delta = (seq - last) & 0xFFFF
        if 0 < delta < 0x8000:
            if seq < last:
                self.cycles += 0x10000
            self.max_seq = seq

    @property
    def expected(self) -> int:
        if self.max_seq < 0:
            return 0
        return self.cycles + self.max_seq - self.first_seq + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.packets)


def vp8_keyframe_start(packet: bytes) -> bool:
    """True when the (decrypted) RTP packet starts a VP8 keyframe."""
    if len(packet) < 13:
        return False
    b0 = packet[0]
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if len(packet) < offset + 4:
            return False
        offset += 4 + 4 * ((packet[offset + 2] << 8) | packet[offset + 3])
    if len(packet) <= offset:
        return False
    desc = packet[offset]
    start = bool(desc & 0x10) and (desc & 0x07) == 0
    offset += 1
    if desc & 0x80:  # X: extension byte
        if len(packet) <= offset:
            return False
        ext = packet[offset]
        offset += 1
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(packet) <= offset:
                return False
            offset += 2 if packet[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K
            offset += 1
    if not start or len(packet) <= offset:
        return False
    return (packet[offset] & 0x01) == 0


@dataclass
class JoinTimes:
    """Milliseconds from the POST to: its answer, ICE connected, DTLS connected,
    the first video packet and the first keyframe."""

    post_ms: float | None = None
    ice_ms: float | None = None
    dtls_ms: float | None = None
    first_video_ms: float | None = None
    keyframe_ms: float | None = None


@dataclass
class ViewerCounters:
    video: TrackCounter = field(default_factory=TrackCounter)
    audio: TrackCounter = field(default_factory=TrackCounter)
    other: int = 0
    video_padding_bytes: int = 0  # of video.octets: padding-only probes (P bit, in the clear)


def offer_sdp(
    ice: Any, fingerprints: list[Any], candidates: list[Any], *, video: bool = True, audio: bool = True
) -> str:
    """A recvonly offer: VP8 and Opus, BUNDLE, rtcp-mux, all candidates, end-of-candidates."""
    mids = []
    if video:
        mids.append(("video", VIDEO_PT, [f"a=rtpmap:{VIDEO_PT} VP8/90000",
                                         f"a=rtcp-fb:{VIDEO_PT} nack",
                                         f"a=rtcp-fb:{VIDEO_PT} nack pli",
                                         f"a=rtcp-fb:{VIDEO_PT} ccm fir"]))
    if audio:
        mids.append(("audio", AUDIO_PT, [f"a=rtpmap:{AUDIO_PT} opus/48000/2",
                                         f"a=fmtp:{AUDIO_PT} minptime=10;useinbandfec=1"]))
    lines = [
        "v=0",
        f"o=- {secrets.randbits(62)} 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(str(i) for i in range(len(mids))),
        "a=msid-semantic:WMS *",
    ]
    for i, (kind, pt, codec_lines) in enumerate(mids):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}",
            "c=IN IP4 0.0.0.0",
            f"a=mid:{i}",
            "a=recvonly",
            "a=rtcp-mux",
            *codec_lines,
            f"a=ice-ufrag:{ice.usernameFragment}",
            f"a=ice-pwd:{ice.password}",
            *[f"a=fingerprint:{f.algorithm} {f.value}" for f in fingerprints],
            "a=setup:actpass",
            *[f"a=candidate:{aiortc_sdp.candidate_to_sdp(c)}" for c in candidates],
            "a=end-of-candidates",
        ]
    return "\r\n".join(lines) + "\r\n"


class WhepError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


class CheapViewer:
    """One WHEP session whose media is counted, never decoded. With
    ``remb_bps`` it also says, by REMB twice a second, that its downlink holds
    only that much (as a browser on a slow link would)."""

    def __init__(self, certificate: RTCCertificate, remb_bps: int | None = None) -> None:
        self.counters = ViewerCounters()
        self.times = JoinTimes()
        self.location: str | None = None
        self.error: str | None = None
        self._gatherer = RTCIceGatherer(iceServers=[])
        self._ice = RTCIceTransport(self._gatherer)
        self._dtls = RTCDtlsTransport(self._ice, [certificate])
        # the offerer controls ICE; set before the POST, as the server's
        # checks may arrive before the answer is read
        self._ice._connection.ice_controlling = True
        self._t0 = 0.0
        self._keyframe_seen = False
        self._unprotect: Any = None
        self._video_pt = VIDEO_PT
        self._audio_pt = AUDIO_PT
        self._closed = False
        self.remb_bps = remb_bps
        self._remb_task: asyncio.Task[None] | None = None

    async def join(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        """POST the offer, connect ICE and DTLS. Raises on failure."""
        await self._gatherer.gather()
        self._tap_sockets()
        offer = offer_sdp(
            self._gatherer.getLocalParameters(),
            self._dtls.getLocalParameters().fingerprints,
            self._gatherer.getLocalCandidates(),
        )
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._t0 = time.monotonic()
        async with http.post(url, data=offer, headers=headers) as response:
            text = await response.text()
            if response.status != 201:
                raise WhepError(response.status, text)
            location = response.headers.get("Location", "")
        self.location = str(response.url.join(URL(location))) if location else None
        self.times.post_ms = (time.monotonic() - self._t0) * 1000
        answer = aiortc_sdp.SessionDescription.parse(text)
        self._read_payload_types(answer)
        media = answer.media[0]
        async with asyncio.timeout(CONNECT_TIMEOUT):
            for candidate in media.ice_candidates:
                await self._ice.addRemoteCandidate(candidate)
            await self._ice.addRemoteCandidate(None)
            self._dtls._set_role("server" if media.dtls.role == "client" else "client")
            await self._ice.start(media.ice)
            self.times.ice_ms = (time.monotonic() - self._t0) * 1000
            await self._dtls.start(media.dtls)
            self.times.dtls_ms = (time.monotonic() - self._t0) * 1000
        if self._dtls.state != "connected":
            raise ConnectionError(f"DTLS {self._dtls.state}")
        self._unprotect = self._dtls._rx_srtp.unprotect
        if self.remb_bps:
            self._remb_task = asyncio.create_task(self._send_remb(self.remb_bps))

    async def _send_remb(self, bitrate: int) -> None:
        packet = bytes(RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=secrets.randbits(32), media_ssrc=0, fci=pack_remb_fci(bitrate, [])
        ))
        while True:
            try:
                await self._dtls._send_rtp(packet)  # RTCP: protected as such by aiortc
            except ConnectionError:
                return
            await asyncio.sleep(REMB_INTERVAL)

    def _read_payload_types(self, answer: Any) -> None:
        for m in answer.media:
            if m.rtp.codecs and m.direction in ("sendonly", "sendrecv"):
                if m.kind == "video":
                    self._video_pt = m.rtp.codecs[0].payloadType
                elif m.kind == "audio":
                    self._audio_pt = m.rtp.codecs[0].payloadType

    def _tap_sockets(self) -> None:
        """Count RTP in each socket's datagram callback; pass everything else on."""
        for protocol in self._ice._connection._protocols:
            passthrough = protocol.datagram_received

            def datagram_received(data: bytes, addr: Any, _passthrough: Any = passthrough) -> None:
                if 127 < data[0] < 192 and not 191 < data[1] < 224 and len(data) >= 12:
                    self._on_rtp(data)
                else:
                    _passthrough(data, addr)

            protocol.datagram_received = datagram_received

    def _on_rtp(self, data: bytes) -> None:
        pt = data[1] & 0x7F
        seq = (data[2] << 8) | data[3]
        if pt == self._video_pt:
            self.counters.video.on_packet(seq, len(data))
            if data[0] & 0x20:
                self.counters.video_padding_bytes += len(data)
            if not self._keyframe_seen:
                self._check_keyframe(data)
        elif pt == self._audio_pt:
            self.counters.audio.on_packet(seq, len(data))
        else:
            self.counters.other += 1

    def _check_keyframe(self, data: bytes) -> None:
        now_ms = (time.monotonic() - self._t0) * 1000
        if self.times.first_video_ms is None:
            self.times.first_video_ms = now_ms
        if self._unprotect is None:
            return
        try:
            clear = self._unprotect(data)
        except Exception:  # noqa: BLE001 - replayed or not yet keyed: wait for the next
            return
        if vp8_keyframe_start(clear):
            self._keyframe_seen = True
            self.times.keyframe_ms = now_ms
            self._unprotect = None

    async def close(self, http: aiohttp.ClientSession | None, token: str | None) -> None:
        """DELETE the session (when it was created) and stop DTLS and ICE."""
        if self._closed:
            return
        self._closed = True
        if self._remb_task is not None:
            self._remb_task.cancel()
        await delete_session(http, self.location, token)
        for stop in (self._dtls.stop, self._ice.stop):
            try:
                async with asyncio.timeout(5):
                    await stop()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
