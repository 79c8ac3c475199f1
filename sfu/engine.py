"""The media engine: sessions by id, rooms by name, capacity, observers.

One :class:`MediaEngine` per process. It is told "this offer publishes into
room R" or "this offer subscribes to room R" and answers with SDP; it knows
nothing of HTTP, Socket.IO, the database or rooms' rules.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceParameters
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from config.settings import Settings

from . import metrics
from .candidates import CandidatePolicy
from .codecs import choose_publish_codec, match_subscriber_codec, pull_sections
from .errors import (
    AtCapacity,
    IceRestartRefused,
    NothingAcceptable,
    PublisherExists,
    RoomNotLive,
    SdpError,
    SessionNotFound,
)
from .local import LocalPublisher
from .recording_sink import LocalSubscriber, RtpSink
from .sdp import (
    EXT_ABS_SEND_TIME,
    MAX_LAYERS,
    Offer,
    OfferedMedia,
    ice_parameters,
    parse_candidate,
    parse_offer,
)
from .session import MediaLine, Session
from .track import DownTrack, UpTrack

logger = logging.getLogger(__name__)

PublisherStarted = Callable[[str, Session], None | Awaitable[None]]
PublisherEnded = Callable[[str, Session, str], None | Awaitable[None]]
SessionClosed = Callable[[Session, str], None | Awaitable[None]]
RenegotiationNeeded = Callable[[Session], None | Awaitable[None]]
LayerChanged = Callable[[Session, DownTrack], None | Awaitable[None]]
OfferExchange = Callable[[str], Awaitable[str]]  # our offer -> the remote's answer

SENDING = ("sendonly", "sendrecv")
RECEIVING = ("recvonly", "sendrecv")


@dataclass
class Room:
    name: str
    publishers: dict[str, Session] = field(default_factory=dict)
    subscribers: dict[str, Session] = field(default_factory=dict)


@dataclass(frozen=True)
class RoomInfo:
    name: str
    publishers: int
    subscribers: int
    live: bool  # a publisher is connected


class MediaEngine:
    """Publish/subscribe media sessions, forwarding encoded RTP without decoding."""

    def __init__(self, settings: Settings, *, connect_timeout: float = 30.0) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout
        self.candidates = CandidatePolicy(settings)  # sfu/candidates.py
        self.certificate = RTCCertificate.generateCertificate()
        self._sessions: dict[str, Session] = {}
        self._rooms: dict[str, Room] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._started: set[str] = set()  # publisher session ids announced as started
        # observers wired by the app (callbacks; may return an awaitable)
        self.on_publisher_started: PublisherStarted | None = None
        self.on_publisher_ended: PublisherEnded | None = None
        self.on_session_closed: SessionClosed | None = None
        self.on_renegotiation_needed: RenegotiationNeeded | None = None
        self.on_layer_changed: LayerChanged | None = None

    # -- the interface ----------------------------------------------------------------------

    async def publish(self, room: str, offer_sdp: str, *, owner: str = "") -> Session:
        """Answer a publisher's offer (recvonly); the answer is ``session.answer_sdp``."""
        offer = parse_offer(offer_sdp)
        plan = _publish_plan(offer)
        if not any(codec is not None for _, codec in plan):
            raise NothingAcceptable("no VP8, H.264 (packetization-mode 1) or Opus track to publish")
        self._check_open()
        self._check_sessions()
        r = self._rooms.get(room)
        if r is not None and r.publishers:
            raise PublisherExists(f"room {room!r} already has a publisher")
        session = Session(self, "publisher", room, owner)
        self._add(session, publisher=True)
        lines = _publisher_lines(session, plan)
        await self._set_up(session, session.start(offer, lines))
        return session

    async def subscribe(self, room: str, offer_sdp: str, *, owner: str = "") -> Session:
        """Answer a subscriber's offer (sendonly) with the tracks of the room's publisher."""
        offer = parse_offer(offer_sdp)
        r = self._rooms.get(room)
        if r is None or not r.publishers:
            raise RoomNotLive(f"room {room!r} has no publisher")
        uptracks = [u for p in r.publishers.values() for u in p.uptracks if not u.closed]
        plan = _subscribe_plan(offer, uptracks)
        if not any(up is not None for _, up, _ in plan):
            raise NothingAcceptable("the offer cannot receive any of the room's tracks")
        self._check_open()
        self._check_sessions()
        if len(r.subscribers) >= self.settings.max_subscribers_per_room:
            raise AtCapacity(f"room {room!r} is full")
        session = Session(self, "subscriber", room, owner)
        self._add(session, publisher=False)
        lines = []
        for media, up, peer_codec in plan:
            line = MediaLine(media)
            if up is not None:
                _send_on(line, session, up, peer_codec)
            lines.append(line)
        await self._set_up(session, session.start(offer, lines))
        return session

    async def join_call(self, room: str, offer_sdp: str, *, owner: str = "") -> Session:
        """A call party's sendrecv offer: publish its tracks into ``room`` and
        receive the other party's. At most two parties per room.

        The answer announces a track on every section the party receives on
        that no track of the other party fills yet (``Session.announce``).
        When the other party joins later, each of its tracks whose codec the
        party offered under the announced payload type takes the announced
        SSRC and is sent there as soon as both are connected: no new offer.
        Only a track that fits no announcement makes
        ``on_renegotiation_needed(session)`` ask the app to send
        ``session.create_offer()`` and pass the answer to ``session.accept_answer``."""
        offer = parse_offer(offer_sdp)
        r = self._rooms.get(room)
        others = list(r.publishers.values()) if r is not None else []
        if len(others) >= 2 or any(o.role != "peer" for o in others):
            raise PublisherExists(f"room {room!r} already has its parties")
        publish = _publish_plan(offer)
        # the other party's tracks, also while it is still gathering (its lines)
        theirs = [line.up for o in others for line in o.lines if line.up is not None and not line.up.closed]
        receive = _subscribe_plan(offer, theirs)
        if not any(c is not None for _, c in publish) and not any(
            u is not None for _, u, _ in receive
        ):
            raise NothingAcceptable("the offer neither sends nor receives forwardable media")
        self._check_open()
        self._check_sessions()
        session = Session(self, "peer", room, owner)
        self._add(session, publisher=True)
        lines = []
        for (media, codec), (_, up, peer_codec) in zip(publish, receive, strict=True):
            line = MediaLine(media)
            if codec is not None:
                # the other party's answer announced a track of this kind: take its SSRC
                announced = next((a for o in others if (a := o.claimable(media.kind, codec)) is not None), None)
                line.up = session.new_uptrack(media, codec, out_ssrc=announced.ssrc if announced else None)
                if announced is not None:
                    announced.up = line.up
            if up is not None:
                _send_on(line, session, up, peer_codec)
            else:
                session.announce(line)
            lines.append(line)
        await self._set_up(session, session.start(offer, lines))
        # Both parties may have offered at once: whoever finishes setting up
        # second completes both directions with every party already set up (a
        # party still setting up does the same when it finishes).
        r = self._rooms.get(room)
        current = list(r.publishers.values()) if r is not None else []
        for other in current:
            if other is session or other.closed or not other.answer_sdp:
                continue
            if other.offer_tracks(session.uptracks):
                self._notify(self.on_renegotiation_needed, other)
            if not session.closed and session.offer_tracks(other.uptracks):
                self._notify(self.on_renegotiation_needed, session)
        return session

    async def pull(self, room: str, exchange: OfferExchange, *, owner: str = "") -> Session:
        """Be an edge for ``room``: offer to receive audio and video from a
        remote origin (``exchange`` sends our offer, e.g. as a WHEP client, and
        returns the origin's answer) and publish what arrives into the local
        room, as its publisher. The RTP is forwarded as it arrives (no
        decoding); local subscribers subscribe as usual. No
        ``on_publisher_started``/``ended`` for a pulled session: the stream's
        publisher is on the origin."""
        self._check_open()
        self._check_sessions()
        r = self._rooms.get(room)
        if r is not None and r.publishers:
            raise PublisherExists(f"room {room!r} already has a publisher")
        session = Session(self, "publisher", room, owner)
        session.pulled = True
        self._add(session, publisher=True)
        try:
            offer_sdp = await session.pull_offer(pull_sections())
            answer = parse_offer(await exchange(offer_sdp))
            plan = _publish_plan(answer)  # the origin's answer sends what we will publish
            if not any(codec is not None for _, codec in plan):
                raise NothingAcceptable("the origin sends no forwardable track")
        except BaseException:
            await session.close("setup_failed")
            raise
        lines = _publisher_lines(session, plan)
        await self._set_up(session, session.start_pulled(answer, lines))
        return session

    def publish_local(
        self, room: str, *, owner: str = "", tracks: list[tuple[str, RTCRtpCodecParameters]]
    ) -> LocalPublisher:
        """A publisher fed RTP by this process (an ingest, see sfu/local.py):
        ``tracks`` is ``[(kind, codec)]``, one per kind. Live at once, so
        ``on_publisher_started`` fires now; same conflicts as :meth:`publish`."""
        self._check_open()
        self._check_sessions()
        r = self._rooms.get(room)
        if r is not None and r.publishers:
            raise PublisherExists(f"room {room!r} already has a publisher")
        publisher = LocalPublisher(self, room, owner, tracks)
        self._add(publisher, publisher=True)  # type: ignore[arg-type]
        publisher.start()
        return publisher

    def subscribe_local(self, room: str, sink: RtpSink, *, owner: str = "") -> LocalSubscriber:
        """A subscriber in this process (a recorder, see sfu/recording_sink.py):
        the room's RTP goes to ``sink``, one down track per kind, from the next
        keyframe. Same conditions as :meth:`subscribe` (live room, capacity)."""
        r = self._rooms.get(room)
        if r is None or not r.publishers:
            raise RoomNotLive(f"room {room!r} has no publisher")
        self._check_open()
        self._check_sessions()
        if len(r.subscribers) >= self.settings.max_subscribers_per_room:
            raise AtCapacity(f"room {room!r} is full")
        subscriber = LocalSubscriber(self, room, owner, sink)
        self._add(subscriber, publisher=False)  # type: ignore[arg-type]
        subscriber.start([u for p in r.publishers.values() for u in p.uptracks if not u.closed])
        return subscriber

    def session(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def sessions(self) -> list[Session]:
        """Every open session (revocation ends those of one owner)."""
        return list(self._sessions.values())

    async def add_remote_candidate(self, session_id: str, candidate: str) -> None:
        """A trickled ``candidate:...`` line; ``""`` or ``end-of-candidates`` ends them."""
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        parsed = parse_candidate(candidate)
        try:
            await session.add_remote_candidate(parsed)
        except (ValueError, TypeError) as exc:
            raise SdpError(f"unusable candidate: {exc}") from None

    def set_max_layer(self, session_id: str, max_layer: int | None) -> None:
        """A subscriber's cap on the simulcast layer it receives: 0 is the
        lowest, None lifts the cap. Tracks without simulcast are not affected."""
        session = self._sessions.get(session_id)
        if session is None or session.closed or not isinstance(session, Session):
            raise SessionNotFound(session_id)
        if max_layer is not None and not 0 <= max_layer < MAX_LAYERS:
            raise SdpError(f"max layer must be 0..{MAX_LAYERS - 1} or none")
        session.set_max_layer(max_layer)

    async def restart_ice(
        self, session_id: str, ufrag: str, pwd: str, candidates: list[str]
    ) -> tuple[RTCIceParameters, list[RTCIceCandidate]]:
        """The peer's ICE restart with new credentials and trickled ``candidate:...``
        lines (``end-of-candidates`` ends them): our new credentials and
        candidates. The session stays the same; see :meth:`Session.restart_ice`."""
        session = self._restartable(session_id)
        remote = ice_parameters(ufrag, pwd)
        parsed = [parse_candidate(line) for line in candidates]
        usable = [c for c in parsed if c is not None]
        return await session.restart_ice(remote, usable, complete=None in parsed)

    async def restart_offer(self, session_id: str, offer_sdp: str) -> str:
        """A new offer that restarts the session's ICE: the answer with our new credentials."""
        session = self._restartable(session_id)
        offer = parse_offer(offer_sdp)
        if not session.is_ice_restart(offer):
            raise IceRestartRefused("the offer keeps the ICE credentials: nothing to restart")
        return await session.restart_offer(offer)

    def _restartable(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        if not isinstance(session, Session):  # a local publisher has no ICE
            raise IceRestartRefused("this session has no ICE to restart")
        return session

    async def close_session(self, session_id: str, reason: str = "closed") -> None:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        await session.close(reason)

    async def close_room(self, room: str, reason: str = "room_ended") -> None:
        r = self._rooms.get(room)
        if r is None:
            return
        await asyncio.gather(*(s.close(reason) for s in list(r.subscribers.values())))
        await asyncio.gather(*(s.close(reason) for s in list(r.publishers.values())))

    def has_publisher(self, room: str) -> bool:
        r = self._rooms.get(room)
        return r is not None and bool(r.publishers)

    def subscriber_count(self, room: str) -> int:
        r = self._rooms.get(room)
        return len(r.subscribers) if r is not None else 0

    def rooms(self) -> dict[str, RoomInfo]:
        return {
            name: RoomInfo(
                name=name,
                publishers=len(r.publishers),
                subscribers=len(r.subscribers),
                live=any(p.state == "connected" for p in r.publishers.values()),
            )
            for name, r in self._rooms.items()
        }

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def close(self) -> None:
        """Close every session and wait for every task the engine started."""
        self._closing = True
        subscribers = [s for s in self._sessions.values() if s.role == "subscriber"]
        await asyncio.gather(*(s.close("shutdown") for s in subscribers))
        await asyncio.gather(*(s.close("shutdown") for s in list(self._sessions.values())))
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise AtCapacity("the media engine is shutting down")

    def _check_sessions(self) -> None:
        if len(self._sessions) >= self.settings.max_sessions:
            raise AtCapacity("too many media sessions in this process")

    def _add(self, session: Session, *, publisher: bool) -> None:
        r = self._rooms.get(session.room)
        if r is None:
            r = self._rooms[session.room] = Room(session.room)
            metrics.ROOMS.set(len(self._rooms))
        self._sessions[session.id] = session
        (r.publishers if publisher else r.subscribers)[session.id] = session
        metrics.SESSIONS.inc()
        (metrics.PUBLISHERS if publisher else metrics.SUBSCRIBERS).inc()

    async def _set_up(self, session: Session, setup: Coroutine[Any, Any, None]) -> None:
        try:
            await setup
        except BaseException:
            await session.close("setup_failed")
            raise
        if session.closed:  # closed while gathering (engine shutdown, room ended)
            raise SessionNotFound("session closed during set-up")

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("sfu task failed", exc_info=task.exception())

    def _notify(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(*args)
        except Exception:
            logger.exception("sfu observer failed")
            return
        if inspect.isawaitable(result):
            self.spawn(_awaited(result))

    def layer_changed(self, session: Session, down: DownTrack) -> None:
        """A video track ``session`` receives switched layer, paused or resumed."""
        self._notify(self.on_layer_changed, session, down)

    def session_connected(self, session: Session) -> None:
        if session.role in ("publisher", "peer") and session.uptracks and not session.pulled:
            self._started.add(session.id)
            self._notify(self.on_publisher_started, session.room, session)

    async def session_closing(self, session: Session, reason: str) -> None:
        """First step of a session's close: leave the room; a leaving publisher
        takes the sessions subscribed to it along."""
        r = self._rooms.get(session.room)
        if r is None:
            return
        if session.role in ("publisher", "peer"):
            r.publishers.pop(session.id, None)
            for other in r.publishers.values():
                other.drop_tracks_of(session)  # a call party stays when the other leaves
            dependents = [
                s
                for s in list(r.subscribers.values())
                if any(d.up.publisher is session for d in s.downtracks)
            ]
            await asyncio.gather(*(s.close("publisher_left") for s in dependents))
        else:
            r.subscribers.pop(session.id, None)

    def session_closed(self, session: Session, reason: str) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        metrics.SESSIONS.dec()
        (metrics.SUBSCRIBERS if session.role == "subscriber" else metrics.PUBLISHERS).dec()
        metrics.SESSIONS_ENDED.labels(reason=reason).inc()
        if reason in metrics.FAILURE_REASONS:
            metrics.SESSIONS_FAILED.labels(reason=reason).inc()
        r = self._rooms.get(session.room)
        if r is not None and not r.publishers and not r.subscribers:
            del self._rooms[session.room]
            metrics.ROOMS.set(len(self._rooms))
        if session.id in self._started:
            self._started.discard(session.id)
            self._notify(self.on_publisher_ended, session.room, session, reason)
        self._notify(self.on_session_closed, session, reason)


LAYER_NAMES = {"low": 0, "medium": 1, "high": 2}


def max_layer_value(value: object) -> int | None:
    """A viewer's layer cap as the faces take it: ``"low"``, ``"medium"``,
    ``"high"``, a layer index 0..3, or ``None``/``"none"`` for no cap.
    Raises ValueError on anything else."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        if value in LAYER_NAMES:
            return LAYER_NAMES[value]
        if value.isdigit() and len(value) == 1:
            value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_LAYERS:
        return value
    raise ValueError("maxLayer must be low, medium, high, 0..3 or none")


async def _awaited(result: Awaitable[Any]) -> None:
    await result


def _send_on(line: MediaLine, session: Session, up: UpTrack, peer_codec: Any) -> None:
    """``line`` forwards ``up`` to ``session`` with the peer's payload type."""
    line.down = DownTrack(
        session,
        up,
        mid=line.media.mid,
        payload_type=peer_codec.payloadType,
        abs_send_time_id=line.media.extensions.get(EXT_ABS_SEND_TIME, 0),
    )
    line.down_codec = peer_codec


def _publisher_lines(session: Session, plan: list[tuple[OfferedMedia, Any]]) -> list[MediaLine]:
    """One line per offered media section; an UpTrack where there is a codec."""
    lines = []
    for media, codec in plan:
        line = MediaLine(media)
        if codec is not None:
            line.up = session.new_uptrack(media, codec)
        lines.append(line)
    return lines


def _publish_plan(offer: Offer) -> list[tuple[OfferedMedia, Any]]:
    plan: list[tuple[OfferedMedia, Any]] = []
    kinds_taken: set[str] = set()
    for media in offer.media:
        codec = None
        if (
            media.kind in ("audio", "video")
            and media.direction in SENDING
            and media.rtcp_mux
            and media.kind not in kinds_taken  # one audio and one video track per publisher
        ):
            codec = choose_publish_codec(media.codecs)
            if codec is not None:
                kinds_taken.add(media.kind)
        plan.append((media, codec))
    _check_bundle(offer, [m for m, c in plan if c is not None])
    return plan


def _subscribe_plan(
    offer: Offer, uptracks: list[UpTrack]
) -> list[tuple[OfferedMedia, UpTrack | None, Any]]:
    plan: list[tuple[OfferedMedia, UpTrack | None, Any]] = []
    free = list(uptracks)
    for media in offer.media:
        chosen: tuple[UpTrack | None, Any] = (None, None)
        if media.kind in ("audio", "video") and media.direction in RECEIVING and media.rtcp_mux:
            for up in free:
                if up.kind != media.kind:
                    continue
                peer = match_subscriber_codec(up.codec, media.codecs)
                if peer is not None:
                    chosen = (up, peer)
                    free.remove(up)
                    break
        plan.append((media, chosen[0], chosen[1]))
    _check_bundle(offer, [m for m, up, _ in plan if up is not None])
    return plan


def _check_bundle(offer: Offer, used: list[OfferedMedia]) -> None:
    if len(used) > 1 and not all(m.mid in offer.bundle for m in used):
        raise SdpError("an offer with several media sections must BUNDLE them")


__all__ = ["LAYER_NAMES", "MediaEngine", "Room", "RoomInfo", "max_layer_value"]
