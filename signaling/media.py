"""sfu:* events: the same media sessions as WHIP/WHEP, for app clients that hold a socket.

``sfu:publish {roomId, sdp}`` and ``sfu:subscribe {roomId, sdp}`` ack
``{sessionId, sdp}``; ``sfu:ice_candidate {sessionId, candidate}`` trickles;
``sfu:restart {sessionId, sdp}`` restarts ICE with a new offer from the same
connection (``pc.restartIce()``) and acks ``{sessionId, sdp}``, the answer
with the server's new credentials: the session, its tracks and its DTLS
association stay;
``sfu:unpublish`` / ``sfu:unsubscribe {sessionId}`` end a session;
``sfu:layer {sessionId, maxLayer}`` caps the simulcast layer a subscription
receives (``"low"``, ``"medium"``, ``"high"``, 0..3, or null for none). Grants,
limits and errors are WHIP's and WHEP's, as ack errors. A socket's sessions
end when the socket is gone.

``sfu:layer_changed {sessionId, roomId, mid, layer, rid, layers, paused}`` goes
to every socket of a session's owner when the server switches the layer it
sends, pauses the video (not even the lowest layer fits the viewer's link; the
audio goes on) or resumes it: WHEP, ``sfu:subscribe`` and call sessions alike,
so that an app can say "video paused: your connection is too slow".
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from auth import ROOM_ID, Identity
from events.bus import EventBus
from sfu import MAX_SDP_LENGTH, MediaEngine, MediaError, Session, SessionNotFound, max_layer_value
from sfu.track import DownTrack
from signaling.server import SignalError, Signaling, user_room

log = logging.getLogger("airwave.signaling.media")

LAYER_CHANGES_PER_SECOND = 5  # per session

Announce = Callable[[str, Session], Awaitable[None]]
PrepareSubscribe = Callable[[str], Awaitable[None]]
Admit = Callable[[Identity, str, str], Awaitable[None]]  # (identity, room, role); SignalError if not


def _field(data: Any, name: str, limit: int = 256) -> str:
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise SignalError("bad_request", f"{name} must be a non-empty string of at most {limit} characters")
    return value


class SocketSessions:
    """Which media sessions each socket opened."""

    def __init__(self) -> None:
        self.by_socket: dict[str, set[str]] = defaultdict(set)

    def forget(self, session_id: str) -> None:
        """A session ended on its own (ICE failure, publisher left...)."""
        for ids in self.by_socket.values():
            ids.discard(session_id)


async def layer_changed(signaling: Signaling, session: Session, down: DownTrack) -> None:
    """``sfu:layer_changed`` to the sockets of the user whose session it is (on
    any node: the owner's room goes through the Socket.IO manager)."""
    layer = down.layer
    await signaling.sio.emit("sfu:layer_changed", {
        "sessionId": session.id,
        "roomId": session.room,
        "mid": down.mid,
        "layer": layer.index if layer is not None else None,
        "rid": layer.rid if layer is not None else None,
        "layers": len(down.up.layers),
        "paused": down.paused,
    }, room=user_room(session.owner))


def register(
    signaling: Signaling,
    engine: MediaEngine,
    bus: EventBus,
    announce: Announce,
    prepare_subscribe: PrepareSubscribe,
    admit: Admit,
) -> SocketSessions:
    """``prepare_subscribe(room)`` runs before a subscription: in a cluster it
    makes this node pull a room whose origin is another node. ``admit`` applies
    the room's own rules (who may watch, who may publish) after the grant."""
    sessions = SocketSessions()
    by_socket = sessions.by_socket
    layer_changes: dict[str, tuple[float, int]] = {}  # session id -> (window start, changes)

    def owned(sid: str, data: Any) -> str:
        session_id = _field(data, "sessionId", 64)
        if session_id not in by_socket.get(sid, ()):
            raise SignalError("session_not_found", "no such session on this socket")
        return session_id

    async def open_session(sid: str, identity: Identity, data: Any, role: str) -> dict[str, str]:
        room = _field(data, "roomId", 128)
        if not ROOM_ID.fullmatch(room):
            raise SignalError("bad_request", "roomId may hold letters, digits and _ . : - only")
        sdp = _field(data, "sdp", MAX_SDP_LENGTH)
        allowed = identity.can_publish(room) if role == "publish" else identity.can_subscribe(room)
        if not allowed:
            raise SignalError("forbidden", f"the token does not grant {role} for room {room!r}")
        await admit(identity, room, role)
        try:
            if role == "publish":
                session = await engine.publish(room, sdp, owner=identity.user_id)
            else:
                await prepare_subscribe(room)
                session = await engine.subscribe(room, sdp, owner=identity.user_id)
        except MediaError as exc:
            raise SignalError(exc.code, str(exc)) from None
        if sid not in signaling.identities:  # the socket left while we negotiated
            await engine.close_session(session.id, "socket_gone")
            raise SignalError("disconnected", "the socket is gone")
        by_socket[sid].add(session.id)
        if role == "subscribe":
            await announce("subscriber_joined", session)
        return {"sessionId": session.id, "sdp": session.answer_sdp}

    @signaling.on("sfu:publish")
    async def publish(sid: str, identity: Identity, data: Any) -> dict[str, str]:
        return await open_session(sid, identity, data, "publish")

    @signaling.on("sfu:subscribe")
    async def subscribe(sid: str, identity: Identity, data: Any) -> dict[str, str]:
        return await open_session(sid, identity, data, "subscribe")

    @signaling.on("sfu:ice_candidate")
    async def ice_candidate(sid: str, identity: Identity, data: Any) -> dict[str, bool]:
        session_id = owned(sid, data)
        candidate = data.get("candidate", "")
        if isinstance(candidate, dict):  # RTCIceCandidateInit from a browser
            candidate = candidate.get("candidate", "")
        if not isinstance(candidate, str) or len(candidate) > 1024:
            raise SignalError("bad_request", "candidate must be a candidate line")
        try:
            await engine.add_remote_candidate(session_id, candidate)
        except MediaError as exc:
            raise SignalError(exc.code, str(exc)) from None
        return {"ok": True}

    @signaling.on("sfu:restart")
    async def restart(sid: str, identity: Identity, data: Any) -> dict[str, str]:
        session_id = owned(sid, data)
        sdp = _field(data, "sdp", MAX_SDP_LENGTH)
        try:
            answer = await engine.restart_offer(session_id, sdp)
        except MediaError as exc:
            raise SignalError(exc.code, str(exc)) from None
        return {"sessionId": session_id, "sdp": answer}

    async def end(sid: str, data: Any) -> dict[str, bool]:
        session_id = owned(sid, data)
        by_socket[sid].discard(session_id)
        layer_changes.pop(session_id, None)
        try:
            await engine.close_session(session_id, "unpublished")
        except SessionNotFound:
            pass
        return {"ok": True}

    @signaling.on("sfu:layer")
    async def layer(sid: str, identity: Identity, data: Any) -> dict[str, bool]:
        session_id = owned(sid, data)
        if "maxLayer" not in data:
            raise SignalError("bad_request", "maxLayer is required (null for no cap)")
        try:
            max_layer = max_layer_value(data["maxLayer"])
        except ValueError as exc:
            raise SignalError("bad_request", str(exc)) from None
        session = engine.session(session_id)
        if session is None or session.role != "subscriber":
            raise SignalError("session_not_found", "no such subscription on this socket")
        if not identity.can_subscribe(session.room):
            raise SignalError("forbidden", f"the token does not grant subscribe for room {session.room!r}")
        now = time.monotonic()
        since, count = layer_changes.get(session_id, (now, 0))
        if now - since >= 1.0:
            since, count = now, 0
        if count >= LAYER_CHANGES_PER_SECOND:
            raise SignalError("rate_limited", f"at most {LAYER_CHANGES_PER_SECOND} layer changes a second")
        layer_changes[session_id] = (since, count + 1)
        try:
            engine.set_max_layer(session_id, max_layer)
        except MediaError as exc:
            raise SignalError(exc.code, str(exc)) from None
        return {"ok": True}

    @signaling.on("sfu:unpublish")
    async def unpublish(sid: str, identity: Identity, data: Any) -> dict[str, bool]:
        return await end(sid, data)

    @signaling.on("sfu:unsubscribe")
    async def unsubscribe(sid: str, identity: Identity, data: Any) -> dict[str, bool]:
        return await end(sid, data)

    async def socket_gone(sid: str, identity: Identity) -> None:
        for session_id in by_socket.pop(sid, set()):
            layer_changes.pop(session_id, None)
            try:
                await engine.close_session(session_id, "socket_gone")
            except SessionNotFound:
                pass

    signaling.on_disconnect(socket_gone)

    async def kicked(event: dict[str, Any]) -> None:
        if event.get("type") != "viewer_kicked":
            return
        for sid in signaling.sockets_of(event.get("userId", "")):
            for session_id in list(by_socket.get(sid, ())):
                session = engine.session(session_id)
                if session is not None and session.room == event.get("roomId"):
                    by_socket[sid].discard(session_id)
                    await engine.close_session(session_id, "kicked")

    bus.subscribe("rooms", kicked)
    return sessions
