"""The ``call:*`` Socket.IO events, and the media of calls.

Client to server (all acknowledged; failures ack ``{"error": {code, message}}``):
``call:initiate``, ``call:answer``, ``call:reject``, ``call:end``,
``call:sdp_offer``, ``call:sdp_answer``, ``call:ice_candidate``,
``call:extend_request``, ``call:upgrade_request``.

Server to client: ``call:incoming``, ``call:answered``, ``call:rejected``,
``call:ended``, ``call:timeout_warning``, ``call:extend_requested``,
``call:extended``, ``call:upgrade_requested``, ``call:upgraded``,
``call:sdp_offer`` (renegotiation), ``call:resumed``. Payloads are in docs/calls.md.

The rules are :class:`calls.calls.CallService`'s; this module turns its bus
events (channel ``calls``) into socket events and owns the call's media
sessions (:class:`CallMedia`), which it closes when the call ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from auth import Identity
from calls.calls import CALL_SETUP_SECONDS, CALLS_CHANNEL, Call, CallService
from cluster import call_of_room, call_room
from events.bus import EventBus
from rooms.errors import DomainError
from sfu import (
    MAX_SDP_LENGTH,
    SENDING,
    IceRestartRefused,
    MediaEngine,
    MediaError,
    Offer,
    SdpError,
    Session,
    SessionNotFound,
    parse_offer,
)
from turn import IceServerProvider

from .server import SignalError, Signaling, call_audience, user_room

log = logging.getLogger("airwave.calls")


# ----------------------------------------------------------------------------- media


class CallMedia:
    """A call's media on the engine's call shape: one sendrecv ``peer`` session
    per party in the SFU room ``call/{callId}``. Each party's tracks are
    forwarded to the other as RTP, never transcoded. When the other party's
    tracks appear later, the engine asks for a renegotiation and the server
    offers them to the party (``call:sdp_offer`` from the server, answered by
    ``call:sdp_answer``).

    A party whose connection restarts ICE (``pc.restartIce()``: a new offer
    with new ICE credentials, the same DTLS certificate and media sections)
    keeps its session: the answer carries the server's new credentials and
    media resumes on the new path. A party that offers again otherwise (after
    an upgrade to video, from a new connection) gets a new session in place of
    its old one; the other party keeps its session and is offered the new
    tracks.

    The SFU room is :func:`cluster.call_room`: only the call's parties reach its media.
    """

    def __init__(self, engine: MediaEngine) -> None:
        self.engine = engine
        self._sessions: dict[str, dict[str, str]] = {}  # call id -> user id -> session id

    async def join(self, call: Call, user_id: str, sdp: str) -> Session:
        offer = parse_offer(sdp)  # SdpError before anything changes
        if call.media == "audio" and any(m.kind == "video" and m.direction in SENDING for m in offer.media):
            raise SignalError(
                "video_not_allowed", "this is an audio call: call:upgrade_request first, then send video"
            )
        previous = self._sessions.get(call.id, {}).get(user_id)
        if previous is not None:
            session = self.engine.session(previous)
            if session is not None and await self._restarted_ice(session, offer):
                return session
            await self._close(previous, "renegotiated")
        session = await self.engine.join_call(call_room(call.id), sdp, owner=user_id)
        self._sessions.setdefault(call.id, {})[user_id] = session.id
        return session

    @staticmethod
    async def _restarted_ice(session: Session, offer: Offer) -> bool:
        """Restart ICE on ``session`` when ``offer`` is its connection's ICE
        restart (``session.answer_sdp`` is then the answer); False when the
        offer needs a new session."""
        if session.state != "connected" or not session.is_ice_restart(offer):
            return False
        try:
            await session.restart_offer(offer)
        except IceRestartRefused:
            return False
        return True

    def session_of(self, call: Call, user_id: str) -> Session | None:
        return self._session(call.id, user_id)

    def _session(self, call_id: str, user_id: str) -> Session | None:
        session_id = self._sessions.get(call_id, {}).get(user_id)
        return self.engine.session(session_id) if session_id else None

    async def accept_answer(self, call: Call, user_id: str, sdp: str) -> None:
        session = self.session_of(call, user_id)
        if session is None:
            raise SignalError("no_offer_pending", "the server has not sent an offer to answer")
        await session.accept_answer(sdp)

    async def add_candidate(self, call: Call, user_id: str, candidate: str) -> None:
        session = self.session_of(call, user_id)
        if session is None:
            raise SignalError("session_not_found", "no media session: send call:sdp_offer first")
        await self.engine.add_remote_candidate(session.id, candidate)

    def connected(self, call_id: str, user_id: str) -> bool:
        session = self._session(call_id, user_id)
        return session is not None and session.state == "connected"

    def all_connected(self, call_id: str) -> bool:
        """Both parties of the call have a connected media session here."""
        parties = self._sessions.get(call_id, {})
        return len(parties) == 2 and all(self.connected(call_id, user_id) for user_id in parties)

    def forget(self, session_id: str) -> None:
        for sessions in self._sessions.values():
            for user_id, value in list(sessions.items()):
                if value == session_id:
                    del sessions[user_id]

    async def close_call(self, call_id: str) -> None:
        """Every media session of the call: its SFU room holds them all."""
        self._sessions.pop(call_id, None)
        await self.engine.close_room(call_room(call_id), "call_ended")

    async def _close(self, session_id: str, reason: str) -> None:
        try:
            await self.engine.close_session(session_id, reason)
        except SessionNotFound:
            pass


# ------------------------------------------------------------------------- signaling


def socket_host(signaling: Signaling, sid: str) -> str | None:
    """The host name the socket's client used to reach us (for STUN URLs)."""
    environ = signaling.sio.get_environ(sid) or {}
    host = environ.get("HTTP_HOST")
    if not isinstance(host, str) or not host:
        return None
    try:
        return urlsplit("//" + host).hostname
    except ValueError:
        return None


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SignalError("bad_request", "the payload must be an object")
    return data


def _string(data: dict[str, Any], name: str, limit: int = 128) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise SignalError("bad_request", f"'{name}' must be a non-empty string")
    return value


def _candidate(data: dict[str, Any]) -> str:
    """A trickled candidate: a ``candidate:...`` line, a browser's
    ``RTCIceCandidate.toJSON()`` object, or null/"" for the end of candidates."""
    value = data.get("candidate")
    if isinstance(value, dict):
        value = value.get("candidate")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 1024:
        raise SignalError("bad_request", "'candidate' must be a candidate line or an RTCIceCandidate")
    return value


Handler = Callable[[str, Identity, Any], Awaitable[Any]]


class RemoteCallMedia(Protocol):
    """Where a call's media lives (:class:`cluster.CallMediaRouter`)."""

    async def media_node(self, call_id: str) -> str | None:
        """None when this node holds the call's media, else that node's URL."""

    async def forward(self, url: str, call_id: str, user_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Send a party's media request there; its ack (or ``{"error"}``)."""

    async def forget(self, call_id: str) -> None:
        """The call ended."""


class CallSignaling:
    def __init__(
        self,
        signaling: Signaling,
        calls: CallService,
        engine: MediaEngine,
        ice: IceServerProvider,
        bus: EventBus,
        remote_media: RemoteCallMedia,
    ) -> None:
        self.signaling = signaling
        self.sio = signaling.sio
        self.calls = calls
        self.media = CallMedia(engine)
        self.ice = ice
        self.bus = bus
        # sockets of this node in each call's audience: call id -> user id -> sids
        self._members: dict[str, dict[str, set[str]]] = {}
        # call id -> answered at (epoch), until both parties' media is connected
        self._awaiting_media: dict[str, float] = {}
        # at shutdown this node tells its sockets itself, before they close
        self._shutting_down = False
        self._releasing: set[asyncio.Task[None]] = set()  # releases of ended calls
        # which node holds a call's media (this one, on one node)
        self.remote_media = remote_media

    # ------------------------------------------------------------------ wiring
    def register(self) -> None:
        on = self._on
        on("call:initiate", self.initiate)
        on("call:answer", self.answer)
        on("call:reject", self.reject)
        on("call:end", self.end)
        on("call:sdp_offer", self.sdp_offer)
        on("call:sdp_answer", self.sdp_answer)
        on("call:ice_candidate", self.ice_candidate)
        on("call:extend_request", self.extend_request)
        on("call:upgrade_request", self.upgrade_request)
        self.signaling.on_connect(self.connected)
        self.signaling.on_disconnect(self.disconnected)
        self.bus.subscribe(CALLS_CHANNEL, self.call_event)
        self.bus.subscribe("media", self.media_event)

    def _on(self, event: str, handler: Handler) -> None:
        async def rules(sid: str, identity: Identity, data: Any) -> Any:
            try:
                return await handler(sid, identity, data)
            except MediaError as exc:
                raise SignalError(exc.code, exc.message) from None

        self.signaling.on(event)(rules)

    def ice_servers(self, user_id: str, host: str | None) -> list[dict[str, Any]]:
        try:
            return self.ice.ice_servers(user_id, host)
        except ValueError:  # a hostile Host header: no STUN URL rather than an error
            return self.ice.ice_servers(user_id, None)

    async def emit(self, event: str, payload: dict[str, Any], room: str | list[str]) -> None:
        """To this node's sockets only: call events reach every node on the bus,
        and each node tells its own sockets (no duplicates across nodes)."""
        await self.sio.emit(event, payload, room=room, ignore_queue=True)

    async def join(self, sid: str, call_id: str, user_id: str) -> None:
        await self.sio.enter_room(sid, call_audience(call_id))
        sids = self._members.setdefault(call_id, {}).setdefault(user_id, set())
        if sid not in sids:
            sids.add(sid)
            await self.calls.party_socket_joined(call_id, user_id)

    # --------------------------------------------------------- client requests
    async def initiate(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        if not await self.signaling.limits.allow("actions", identity.user_id):
            raise SignalError("rate_limited", "too many calls placed: slow down")
        payload = _object(data)
        to = _string(payload, "to")
        media = payload.get("media", "video")
        host = socket_host(self.signaling, sid)
        call = await self.calls.initiate(identity.user_id, to, media, stun_host=host)
        ack: dict[str, Any] = {
            "callId": call.id,
            "iceServers": self.ice_servers(identity.user_id, host),
            "ringsUntil": self.calls.rings_until(call),
            "status": call.status,
        }
        if call.live:
            await self.join(sid, call.id, identity.user_id)
        else:
            ack["endReason"] = call.end_reason
        return ack

    async def answer(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        call_id = _string(_object(data), "callId")
        call = await self.calls.answer(call_id, identity.user_id)
        if call.answered_at is not None:
            self._awaiting_media.setdefault(call.id, call.answered_at)
        await self.join(sid, call.id, identity.user_id)
        return {
            "callId": call.id,
            "media": call.media,
            "endsAt": call.ends_at,
            "iceServers": self.ice_servers(identity.user_id, socket_host(self.signaling, sid)),
        }

    async def reject(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        payload = _object(data)
        call = await self.calls.reject(_string(payload, "callId"), identity.user_id, payload.get("reason"))
        return {"callId": call.id, "status": call.status}

    async def end(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        call = await self.calls.hang_up(_string(_object(data), "callId"), identity.user_id)
        return {"callId": call.id, "reason": call.end_reason, "duration": call.duration}

    async def sdp_offer(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        payload = _object(data)
        call_id = _string(payload, "callId")
        sdp = _string(payload, "sdp", MAX_SDP_LENGTH)
        if payload.get("direction") is not None:
            raise SignalError(
                "unsupported_direction",
                "one sendrecv connection per party: offer without 'direction' and answer the server's "
                "call:sdp_offer with call:sdp_answer (docs/calls.md)",
            )
        call = await self._active(call_id, identity.user_id)
        ack = await self._media_request(call, identity.user_id, {"kind": "offer", "sdp": sdp})
        await self.join(sid, call.id, identity.user_id)
        return ack

    async def sdp_answer(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        payload = _object(data)
        call = await self._active(_string(payload, "callId"), identity.user_id)
        sdp = _string(payload, "sdp", MAX_SDP_LENGTH)
        return await self._media_request(call, identity.user_id, {"kind": "answer", "sdp": sdp})

    async def ice_candidate(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        payload = _object(data)
        call = await self._active(_string(payload, "callId"), identity.user_id)
        request = {"kind": "candidate", "candidate": _candidate(payload)}
        return await self._media_request(call, identity.user_id, request)

    async def _media_request(self, call: Call, user_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Here, or on the call's media node when that is another node."""
        url = await self.remote_media.media_node(call.id)
        if url is None:
            return await self._local_media(call, user_id, request)
        ack = await self.remote_media.forward(url, call.id, user_id, request)
        error = ack.get("error")
        if isinstance(error, dict):
            raise SignalError(str(error.get("code", "media_error")), str(error.get("message", "")))
        return ack

    async def local_media_request(self, call_id: str, user_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """A party's media request forwarded by its node to this one (the
        call's media node): the ack, or ``{"error": {code, message}}``."""
        try:
            call = await self._active(call_id, user_id)
            return await self._local_media(call, user_id, request)
        except (SignalError, DomainError, MediaError) as exc:
            return {"error": {"code": exc.code, "message": exc.message}}

    async def _local_media(self, call: Call, user_id: str, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("kind")
        if kind == "offer":
            session = await self.media.join(call, user_id, _string(request, "sdp", MAX_SDP_LENGTH))
            latest = await self.calls.get(call.id)
            if latest is None or not latest.live:  # ended while we negotiated
                await self.media.close_call(call.id)
                raise SignalError("call_ended", "the call has ended")
            return {"callId": call.id, "sessionId": session.id, "sdp": session.answer_sdp}
        if kind == "answer":
            await self.media.accept_answer(call, user_id, _string(request, "sdp", MAX_SDP_LENGTH))
            return {"callId": call.id}
        if kind == "candidate":
            candidate = request.get("candidate")
            if not isinstance(candidate, str) or len(candidate) > 1024:
                raise SignalError("bad_request", "'candidate' must be a candidate line")
            try:
                await self.media.add_candidate(call, user_id, candidate)
            except SdpError as exc:
                raise SignalError("bad_candidate", exc.message) from None
            return {"callId": call.id}
        raise SignalError("bad_request", "'kind' must be offer, answer or candidate")

    async def extend_request(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        call, extended = await self.calls.request_extension(_string(_object(data), "callId"), identity.user_id)
        return {
            "callId": call.id,
            "extended": extended,
            "endsAt": call.ends_at,
            "extensionsLeft": max(0, self.calls.settings.call_max_extensions - call.extensions),
        }

    async def upgrade_request(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        call, upgraded = await self.calls.request_upgrade(_string(_object(data), "callId"), identity.user_id)
        return {"callId": call.id, "upgraded": upgraded, "media": call.media}

    async def _active(self, call_id: str, user_id: str) -> Call:
        call = await self.calls.require(call_id, user_id)
        if call.status == "ended":
            raise SignalError("call_ended", "the call has ended")
        if call.status != "active":
            raise SignalError("not_active", "media starts once the call is answered")
        return call

    # ------------------------------------------------- connects and disconnects
    async def connected(self, sid: str, identity: Identity) -> None:
        """A party of a live call on a new socket resumes it. (The user was recorded
        just before by signaling/rooms.py's connect hook, once per connect.)"""
        user_id = identity.user_id
        for call in await self.calls.live_calls_of(user_id):
            await self.calls.party_back(call.id, user_id)
            host = socket_host(self.signaling, sid)
            if call.status == "ringing" and user_id == call.callee_id:
                await self.emit("call:incoming", self._incoming(call, host), sid)
                continue
            await self.join(sid, call.id, user_id)
            resumed: dict[str, Any] = {
                "callId": call.id,
                "status": call.status,
                "media": call.media,
                "peerId": call.other(user_id),
                "endsAt": call.ends_at,
                "extensions": call.extensions,
                "iceServers": self.ice_servers(user_id, host),
                "mediaConnected": self.media.connected(call.id, user_id),
            }
            if call.status == "ringing":
                resumed["ringsUntil"] = self.calls.rings_until(call)
            await self.emit("call:resumed", resumed, sid)

    async def disconnected(self, sid: str, identity: Identity) -> None:
        """The last socket of a party in a call's audience, on any node, left:
        the grace starts."""
        user_id = identity.user_id
        for call_id, parties in list(self._members.items()):
            sids = parties.get(user_id)
            if not sids or sid not in sids:
                continue
            sids.discard(sid)
            elsewhere = await self.calls.party_socket_left(call_id, user_id)
            if sids:
                continue
            del parties[user_id]
            if elsewhere > 0:
                continue
            call = await self.calls.get(call_id)
            if call is not None and call.live:
                await self.calls.party_away(call_id, user_id)

    # ------------------------------------------------------------ domain events
    def _incoming(self, call: Call, host: str | None) -> dict[str, Any]:
        return {
            "callId": call.id,
            "from": call.caller_id,
            "media": call.media,
            "ringsUntil": self.calls.rings_until(call),
            "iceServers": self.ice_servers(call.callee_id, host),
        }

    async def call_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        call_id = event["callId"]
        caller, callee = event["callerId"], event["calleeId"]
        parties = [user_room(caller), user_room(callee)]
        audience = call_audience(call_id)
        emit = self.emit
        if kind == "call_ringing":
            payload = {
                "callId": call_id,
                "from": caller,
                "media": event["media"],
                "ringsUntil": event["ringsUntil"],
                "iceServers": self.ice_servers(callee, event.get("stunHost")),
            }
            await emit("call:incoming", payload, user_room(callee))
        elif kind == "call_answered":
            self._awaiting_media.setdefault(call_id, float(event["answeredAt"]))
            payload = {"callId": call_id, "answeredAt": event["answeredAt"], "endsAt": event["endsAt"],
                       "media": event["media"]}
            await emit("call:answered", payload, parties)
        elif kind == "call_ended":
            if self._shutting_down:
                await self._release(call_id, caller, callee)
                return
            if "rejectReason" in event:
                await emit("call:rejected", {"callId": call_id, "reason": event["rejectReason"]},
                           user_room(caller))
            payload = {"callId": call_id, "reason": event["reason"], "duration": event["duration"]}
            await emit("call:ended", payload, parties)
            # off the bus's path: with Redis the bus delivers one event after another,
            # and the release's round trips (closing the audience, forgetting the media
            # node) held back the call:ended of every call that ended at the same time
            self._spawn_release(call_id, caller, callee)
        elif kind == "call_warning":
            await emit("call:timeout_warning",
                       {"callId": call_id, "remaining": event["remaining"], "endsAt": event["endsAt"]},
                       audience)
        elif kind == "call_extend_requested":
            await emit("call:extend_requested", {"callId": call_id, "by": event["by"]}, audience)
        elif kind == "call_extended":
            await emit("call:extended",
                       {"callId": call_id, "endsAt": event["endsAt"], "extensions": event["extensions"]},
                       audience)
        elif kind == "call_upgrade_requested":
            await emit("call:upgrade_requested", {"callId": call_id, "by": event["by"]}, audience)
        elif kind == "call_upgraded":
            await emit("call:upgraded", {"callId": call_id, "media": event["media"]}, audience)

    def _spawn_release(self, call_id: str, caller: str, callee: str) -> None:
        task = asyncio.get_running_loop().create_task(self._release(call_id, caller, callee),
                                                      name=f"call-release-{call_id}")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, call_id: str, caller: str, callee: str) -> None:
        self._awaiting_media.pop(call_id, None)
        self._members.pop(call_id, None)
        # every node releases its own sockets' audience (each hears call_ended on the bus)
        await self.signaling.manager.close_room_here(call_audience(call_id))
        await self.media.close_call(call_id)
        try:
            await self.remote_media.forget(call_id)
        except Exception as exc:  # Redis down: the record expires on its own
            log.warning("call %s: media node record not cleared: %s", call_id, exc)

    async def media_event(self, event: dict[str, Any]) -> None:
        """This node's media sessions (local events): forget closed ones, and
        time the setup once both parties' media is connected."""
        call_id = call_of_room(str(event.get("roomId", "")))
        if call_id is None:
            return
        kind = event.get("type")
        if kind == "publisher_ended":
            self.media.forget(str(event.get("sessionId", "")))
        elif kind == "publisher_started" and call_id in self._awaiting_media:
            # both parties' sessions connected (no database read: an ended call's
            # entry is gone, _release pops it)
            if self.media.all_connected(call_id):
                answered = self._awaiting_media.pop(call_id, None)
                if answered is not None:
                    CALL_SETUP_SECONDS.observe(max(0.0, time.time() - answered))

    async def renegotiate(self, session: Session) -> None:
        """The engine has the other party's new tracks for ``session``: offer
        them to its party's sockets in the call (``call:sdp_offer``)."""
        call_id = call_of_room(session.room)
        if call_id is None or session.closed:
            return
        try:
            offer = session.create_offer()
        except SessionNotFound:
            return
        sids = sorted(self._members.get(call_id, {}).get(session.owner, ()))
        payload = {"callId": call_id, "sdp": offer, "sessionId": session.id}
        if sids:
            await self.emit("call:sdp_offer", payload, sids)
        else:  # the party's sockets are on other nodes (or none): Socket.IO's manager carries it
            await self.sio.emit("call:sdp_offer", payload, room=user_room(session.owner))

    # ------------------------------------------------------------ server ends
    async def end_calls_for_shutdown(self, *, all_calls: bool) -> None:
        """At shutdown, while sockets are still open: end as ``server_shutdown``
        every live call when this is the only node, else the calls whose media
        this node holds. Other calls go on: their parties' sockets reconnect to
        another node within the grace, and their timers live in Redis."""
        call_ids = None
        if not all_calls:
            call_ids = {c for room in self.media.engine.rooms() if (c := call_of_room(room))}
        self._shutting_down = True
        # The bus may deliver call_ended later (Redis) than the sockets close:
        # tell this node's sockets directly (other nodes hear it on the bus).
        for call in await self.calls.end_live_calls("server_shutdown", call_ids):
            payload = {"callId": call.id, "reason": call.end_reason, "duration": call.duration}
            await self.emit("call:ended", payload, [user_room(u) for u in call.parties])
            await self._release(call.id, call.caller_id, call.callee_id)
        await asyncio.gather(*list(self._releasing), return_exceptions=True)


def register(
    signaling: Signaling,
    calls: CallService,
    engine: MediaEngine,
    ice: IceServerProvider,
    bus: EventBus,
    remote_media: RemoteCallMedia,
) -> CallSignaling:
    call_signaling = CallSignaling(signaling, calls, engine, ice, bus, remote_media)
    call_signaling.register()
    return call_signaling


__all__ = ["CallMedia", "CallSignaling", "register", "socket_host"]
