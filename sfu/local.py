"""A publisher fed from inside this process, not over WebRTC.

An ingest that receives media by other means (RTMP, see ingest/) and turns
it into RTP asks the engine for a :class:`LocalPublisher` for a room; the
engine treats it as any publisher: the room is live, subscribers attach to
its up tracks, ``on_publisher_started``/``on_publisher_ended`` fire, room
rules close it. The ingest hands it whole RTP packets, one call per packet,
which go straight into the up track's forwarding path
(``UpTrack.on_rtp``). There is no ICE, DTLS or SRTP on this side.

Keyframe requests from subscribers (PLI/FIR relayed by the up track) reach
the ingest through ``on_keyframe_request(kind)``; an ingest that cannot ask
its source for one (RTMP has no such message) only counts them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, Protocol

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPacket, RtcpPsfbPacket

from config.settings import Settings

from .codecs import is_forwardable
from .errors import NothingAcceptable
from .track import DownTrack, UpTrack

logger = logging.getLogger(__name__)

METRICS_INTERVAL = 1.0
KeyframeRequest = Callable[[str], None]


def _random_ssrc() -> int:
    return random.randint(1, 0xFFFFFFFE)


class LocalHost(Protocol):
    """What a local publisher needs of the engine (the public names a
    :class:`~sfu.session.SessionHost` has too): it is told of the publisher
    as of any publishing session."""

    @property
    def settings(self) -> Settings: ...

    def session_connected(self, session: Any) -> None: ...

    async def session_closing(self, session: Any, reason: str) -> None: ...

    def session_closed(self, session: Any, reason: str) -> None: ...


class LocalPublisher:
    """A publisher session whose RTP comes from this process. Created by
    ``MediaEngine.publish_local``; has the attributes of a publishing
    :class:`~sfu.session.Session` that the engine and the faces use."""

    role: Literal["publisher"] = "publisher"
    pulled = False
    answer_sdp = ""

    def __init__(
        self,
        engine: LocalHost,
        room: str,
        owner: str,
        tracks: list[tuple[str, RTCRtpCodecParameters]],
    ) -> None:
        kinds = [kind for kind, _ in tracks]
        if not tracks or len(set(kinds)) != len(kinds):
            raise NothingAcceptable("a local publisher sends one track of each kind it has")
        for kind, codec in tracks:
            if kind not in ("audio", "video") or not is_forwardable(codec):
                raise NothingAcceptable(f"{codec.mimeType} cannot be forwarded as {kind}")
        self.id = uuid.uuid4().hex
        self.room = room
        self.owner = owner
        self.created_at = time.time()
        self.connected_at: float | None = None
        self.state: Literal["new", "connecting", "connected", "closed"] = "new"
        self.close_reason: str | None = None
        self.rtcp_ssrc = _random_ssrc()
        self.sender = _KeyframeRequests(self)
        self.downtracks: list[DownTrack] = []
        self.keyframe_requests = 0
        self.on_keyframe_request: KeyframeRequest | None = None
        self._engine = engine
        self._closing = False
        self._closed = asyncio.Event()
        self._metrics_task: asyncio.Task[None] | None = None
        self._by_kind = {kind: self._new_uptrack(kind, mid, codec)
                         for mid, (kind, codec) in enumerate(tracks)}
        self.uptracks: list[UpTrack] = list(self._by_kind.values())

    def _new_uptrack(self, kind: str, mid: int, codec: RTCRtpCodecParameters) -> UpTrack:
        return UpTrack(self, kind=kind, mid=str(mid), codec=codec,
                       ssrcs=[_random_ssrc()], out_ssrc=_random_ssrc(),
                       gop_max_age=self._engine.settings.gop_cache_max_age)

    # -- the ingest's side ----------------------------------------------------------------

    def send(self, kind: str, rtp: bytes) -> None:
        """One RTP packet of the ``kind`` track into the forwarding path."""
        up = self._by_kind.get(kind)
        if up is not None and not self._closing and len(rtp) >= 12:
            up.on_rtp(rtp)

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def stats(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "room": self.room,
            "state": self.state,
            "local": True,
            "keyframe_requests": self.keyframe_requests,
            "tracks": [
                {"kind": u.kind, "codec": u.codec.mimeType, "packets": u.packets}
                for u in self.uptracks
            ],
        }

    # -- the engine's side -------------------------------------------------------------------

    def start(self) -> None:
        """Connected at once: there is no transport to set up."""
        self.state = "connected"
        self.connected_at = time.time()
        self._metrics_task = asyncio.create_task(self._flush_metrics(), name=f"sfu-local-{self.id}")
        self._engine.session_connected(self)

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL)
            for up in self.uptracks:
                up.periodic()

    def keyframe_requested(self, media_ssrc: int) -> None:
        for kind, up in self._by_kind.items():
            if up.in_ssrc == media_ssrc:
                self.keyframe_requests += 1
                if self.on_keyframe_request is not None:
                    try:
                        self.on_keyframe_request(kind)
                    except Exception:
                        logger.exception("keyframe request handler failed")

    def drop_tracks_of(self, publisher: Any) -> None:
        """A local publisher receives nothing."""

    async def close(self, reason: str = "closed") -> None:
        """End the publisher; its subscribers end with ``publisher_left``. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        for up in self.uptracks:
            up.close()
        await self._engine.session_closing(self, reason)
        task = self._metrics_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.state = "closed"
        self._closed.set()
        self._engine.session_closed(self, reason)

    def __repr__(self) -> str:
        return f"LocalPublisher({self.id[:8]} room={self.room!r} {self.state})"


class _KeyframeRequests:
    """Stands where a session's datagram sender is: the RTCP an up track sends
    to its publisher (PLI or FIR) becomes a keyframe request to the ingest."""

    def __init__(self, publisher: LocalPublisher) -> None:
        self.publisher = publisher

    def send_rtcp(self, data: bytes) -> None:
        for packet in RtcpPacket.parse(data):
            if not isinstance(packet, RtcpPsfbPacket):
                continue
            if packet.fmt == RTCP_PSFB_PLI:
                self.publisher.keyframe_requested(packet.media_ssrc)
            elif packet.fmt == RTCP_PSFB_FIR and len(packet.fci) >= 4:
                self.publisher.keyframe_requested(int.from_bytes(packet.fci[:4], "big"))


__all__ = ["LocalPublisher"]
