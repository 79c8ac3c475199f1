"""A subscriber inside this process, not over WebRTC: the mirror of sfu/local.py.

A consumer that wants a room's RTP as a viewer gets it (a recorder, see
recording/) asks the engine for a :class:`LocalSubscriber` with a
:class:`RtpSink`. The engine treats it as any subscriber: it counts toward the
room's subscribers, it closes with ``publisher_left`` when the publisher
leaves, with ``room_ended`` or ``shutdown`` when the room or the engine ends.

Each up track gets one :class:`~sfu.track.DownTrack` whose target's protect
step is the identity and whose send step hands the RTP packet, as a viewer
would receive it after SRTP, to ``sink.on_rtp(kind, packet)``. The down track
starts at the next keyframe (not from the GOP cache, whose replay squeezes
timestamps). There is no ICE, DTLS or SRTP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal, Protocol

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from .track import DownTrack, Target, UpTrack

if TYPE_CHECKING:
    from .engine import MediaEngine


class RtpSink(Protocol):
    """Where a local subscriber's RTP goes; called on the event loop, must not block."""

    def on_rtp(self, kind: str, packet: bytes) -> None: ...

    def on_closed(self, reason: str) -> None: ...


def _unprotected(packet: bytes) -> bytes:
    return packet


class LocalSubscriber:
    """A subscriber session whose RTP goes to a sink in this process. Created by
    ``MediaEngine.subscribe_local``; has the attributes of a subscribing
    :class:`~sfu.session.Session` that the engine uses."""

    role: Literal["subscriber"] = "subscriber"
    pulled = False
    answer_sdp = ""

    def __init__(self, engine: MediaEngine, room: str, owner: str, sink: RtpSink) -> None:
        self.id = uuid.uuid4().hex
        self.room = room
        self.owner = owner
        self.sink = sink
        self.created_at = time.time()
        self.state: Literal["new", "connected", "closed"] = "new"
        self.close_reason: str | None = None
        self.downtracks: list[DownTrack] = []
        self._by_kind: dict[str, DownTrack] = {}
        self._engine = engine
        self._closing = False
        self._closed = asyncio.Event()

    def layer_changed(self, down: DownTrack) -> None:
        """A recording has nobody to tell that its layer changed."""

    def start(self, uptracks: list[UpTrack]) -> None:
        """One down track per up track (one per kind), each starting at a keyframe."""
        for up in uptracks:
            if up.kind in self._by_kind or up.closed:
                continue
            session: Any = self  # a DownTrack's session: what it reads of one, this has
            # no GOP cache replay: a recording keeps the stream's own timestamps
            down = DownTrack(
                session, up, mid=up.mid, payload_type=up.codec.payloadType, from_cache=False
            )
            self._by_kind[up.kind] = down
            self.downtracks.append(down)
            down.start(self._target(up.kind))
        self.state = "connected"

    def _target(self, kind: str) -> Target:
        sink = self.sink

        def deliver(packet: bytes, _addr: Any) -> None:
            sink.on_rtp(kind, packet)

        return (_unprotected, deliver, None)

    # -- what the sink may ask ---------------------------------------------------------------

    def codecs(self) -> dict[str, RTCRtpCodecParameters]:
        """The codec of each kind this subscriber receives."""
        return {kind: down.up.codec for kind, down in self._by_kind.items()}

    def clock(self, kind: str) -> tuple[int, int, int] | None:
        """(NTP time, RTP timestamp, clock rate) of the ``kind`` stream now, as
        the sender report to a viewer would say; None for a kind not received."""
        down = self._by_kind.get(kind)
        if down is None:
            return None
        info = down.sender_report().sender_info
        return info.ntp_timestamp, info.rtp_timestamp, down.up.clock_rate

    def request_keyframe(self, kind: str = "video") -> None:
        down = self._by_kind.get(kind)
        if down is not None:
            down.keyframe_requests += 1
            down.up.request_keyframe()

    def resend(self, kind: str, seqs: list[int]) -> None:
        """Packets of ``kind`` the sink found missing, again from the history, as a
        viewer's NACK gets them: they come through ``on_rtp``, late; gone ones do not."""
        down = self._by_kind.get(kind)
        if down is not None:
            down.retransmit(seqs)

    # -- the engine's side -------------------------------------------------------------------

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
            "tracks": [{"kind": k, "codec": d.up.codec.mimeType} for k, d in self._by_kind.items()],
        }

    def drop_tracks_of(self, publisher: Any) -> None:
        """The engine closes a subscriber whose publisher left; nothing to drop."""

    async def close(self, reason: str = "closed") -> None:
        """Stop receiving; the sink hears ``on_closed(reason)`` once. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        for down in self.downtracks:
            down.stop()
        await self._engine.session_closing(self, reason)  # type: ignore[arg-type]
        self.state = "closed"
        self._closed.set()
        self._engine.session_closed(self, reason)  # type: ignore[arg-type]
        self.sink.on_closed(reason)

    def __repr__(self) -> str:
        return f"LocalSubscriber({self.id[:8]} room={self.room!r} {self.state})"


__all__ = ["LocalSubscriber", "RtpSink"]
