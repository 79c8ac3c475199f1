"""Socket.IO events of live rooms, chat and presence.

Client to server (every one acknowledged; failures ``{"error": {code, message}}``):

- ``stream:join {roomId}`` ack ``{roomId, status, streamId, viewerCount}``;
  ``stream:leave {roomId}``
- ``chat:send {roomId, text, clientId, replyTo?, attachment?}`` ack ``{id, seq, createdAt}`` once stored
  (``{userId, text, clientId}`` instead of ``roomId`` opens the direct chat, and
  the ack adds ``roomId``)
- ``chat:read {roomId, upToSeq}`` ack ``{roomId, upToSeq}``
- ``chat:typing {roomId, on}``

Server to client: ``stream:started {roomId, streamId, resumed}``,
``stream:ended {roomId, reason}``, ``stream:viewers {roomId, count}``,
``stream:kicked {roomId, until}``, ``chat:message {id, seq, roomId, userId, text,
createdAt, clientId}``, ``chat:deleted {roomId, id}``, ``chat:read {roomId, userId,
upToSeq}``, ``chat:typing {roomId, userId, on}``, ``presence:online {userId}``,
``presence:offline {userId, lastSeen}``.

Live rooms speak to their audience (the sockets that joined with
``stream:join``); direct and group rooms speak to every member's sockets.
"""

from __future__ import annotations

import logging
from typing import Any

from auth import Identity
from chat.chat import ChatService, TypingIndicators
from events.bus import Event, EventBus
from presence.presence import PresenceService
from rooms.rooms import RoomRecord, RoomRegistry, Timers, user_viewer
from rooms.social import SocialGraph
from signaling.server import SignalError, Signaling, room_audience, user_room

log = logging.getLogger("airwave.signaling.rooms")


def _room_id(data: Any) -> str:
    room_id = data.get("roomId") if isinstance(data, dict) else None
    if not isinstance(room_id, str) or not room_id or len(room_id) > 128:
        raise SignalError("bad_request", "roomId must be a room id")
    return room_id


class RoomSignals:
    """Delivers room events to sockets, and keeps which socket watches which room."""

    def __init__(
        self,
        signaling: Signaling,
        registry: RoomRegistry,
        chat: ChatService,
        presence: PresenceService,
        social: SocialGraph,
        timers: Timers,
    ) -> None:
        self.signaling = signaling
        self.sio = signaling.sio
        self.registry = registry
        self.chat = chat
        self.presence = presence
        self.social = social
        self.typing = TypingIndicators(timers, self._typing_expired)
        self.watching: dict[str, set[str]] = {}  # sid -> room ids joined with stream:join

    # -- delivery ---------------------------------------------------------------------

    async def deliver(self, room: RoomRecord, event: str, payload: dict[str, Any], skip_sid: str | None = None) -> None:
        if room.type == "live":
            await self.sio.emit(event, payload, to=room_audience(room.id), skip_sid=skip_sid)
            return
        members = await self.chat.members(room.id)
        if members:
            await self.sio.emit(event, payload, to=[user_room(m) for m in members], skip_sid=skip_sid)

    async def _typing_expired(self, room_id: str, user_id: str) -> None:
        room = await self.registry.get(room_id)
        if room is not None:
            await self.deliver(room, "chat:typing", {"roomId": room_id, "userId": user_id, "on": False})

    # -- audience -------------------------------------------------------------------

    async def join(self, sid: str, identity: Identity, room_id: str) -> dict[str, Any]:
        room = await self.registry.admit(room_id, identity)  # the room's audience rule
        if room.type not in ("live", "group"):
            raise SignalError("not_joinable", f"a {room.type} room has no audience to join")
        if room.status == "ended":
            raise SignalError("room_ended", "this room has ended")
        watching = self.watching.setdefault(sid, set())
        viewer = user_viewer(identity.user_id)
        if room_id not in watching:
            if room.max_viewers is not None and not await self.registry.viewers.has(room_id, viewer):
                if await self.registry.viewers.count(room_id) >= room.max_viewers:
                    raise SignalError("room_full", "this room has as many viewers as it takes")
            watching.add(room_id)
            await self.sio.enter_room(sid, room_audience(room_id))
            await self.registry.viewer_joined(room_id, viewer)
        return {
            "roomId": room_id,
            "status": room.status,
            "streamId": room.stream_id,
            "viewerCount": await self.registry.viewers.count(room_id),
        }

    async def leave(self, sid: str, identity: Identity, room_id: str) -> bool:
        watching = self.watching.get(sid)
        await self.sio.leave_room(sid, room_audience(room_id))
        if watching is None or room_id not in watching:
            return False
        watching.discard(room_id)
        await self.registry.viewer_left(room_id, user_viewer(identity.user_id))
        return True

    # -- connections ---------------------------------------------------------------------

    async def connected(self, sid: str, identity: Identity) -> None:
        """Record the user (the one ``seen`` of a connect: rooms is installed before every
        other feature with a connect hook) and tell their contacts they are online."""
        await self.social.seen(identity)
        if await self.presence.connected(identity.user_id):
            await self._tell_contacts(identity.user_id, "presence:online", {"userId": identity.user_id})

    async def disconnected(self, sid: str, identity: Identity) -> None:
        for room_id in self.watching.pop(sid, set()):
            await self.registry.viewer_left(room_id, user_viewer(identity.user_id))
        last_seen = await self.presence.disconnected(identity.user_id)
        if last_seen is not None:
            await self._tell_contacts(
                identity.user_id, "presence:offline", {"userId": identity.user_id, "lastSeen": last_seen}
            )

    async def _tell_contacts(self, user_id: str, event: str, payload: dict[str, Any]) -> None:
        contacts = await self.presence.contacts(user_id)
        if contacts:
            await self.sio.emit(event, payload, to=[user_room(c) for c in contacts])

    # -- room events from the bus -------------------------------------------------------------

    async def on_room_event(self, event: Event) -> None:
        """Every node hears every room event and tells its own sockets (``ignore_queue``:
        this node's sockets only, so nobody hears it twice across nodes)."""
        kind = event.get("type")
        room_id = str(event.get("roomId") or "")
        audience = room_audience(room_id)
        if kind == "stream_started":
            payload = {"roomId": room_id, "streamId": event.get("streamId"), "resumed": bool(event.get("resumed"))}
            await self.sio.emit("stream:started", payload, to=audience, ignore_queue=True)
        elif kind == "viewers_changed":
            payload = {"roomId": room_id, "count": event.get("count", 0)}
            await self.sio.emit("stream:viewers", payload, to=audience, ignore_queue=True)
        elif kind == "room_ended":
            payload = {"roomId": room_id, "reason": event.get("reason", "")}
            await self.sio.emit("stream:ended", payload, to=audience, ignore_queue=True)
            for sid, watching in self.watching.items():
                if room_id in watching:
                    watching.discard(room_id)
                    await self.sio.leave_room(sid, audience)
        elif kind == "viewer_kicked":
            user_id = str(event.get("userId") or "")
            for sid in self.signaling.sockets_of(user_id):
                watching = self.watching.get(sid)
                if watching is not None and room_id in watching:
                    watching.discard(room_id)
                    await self.registry.viewer_left(room_id, user_viewer(user_id))
                await self.sio.leave_room(sid, audience)
                payload = {"roomId": room_id, "until": event.get("until", 0)}
                await self.sio.emit("stream:kicked", payload, to=sid, ignore_queue=True)


def register(
    signaling: Signaling,
    registry: RoomRegistry,
    chat: ChatService,
    presence: PresenceService,
    social: SocialGraph,
    bus: EventBus,
    timers: Timers,
) -> RoomSignals:
    signals = RoomSignals(signaling, registry, chat, presence, social, timers)
    signaling.on_connect(signals.connected)
    signaling.on_disconnect(signals.disconnected)
    bus.subscribe("rooms", signals.on_room_event)

    @signaling.on("stream:join")
    async def stream_join(sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        return await signals.join(sid, identity, _room_id(data))

    @signaling.on("stream:leave")
    async def stream_leave(sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        room_id = _room_id(data)
        return {"roomId": room_id, "left": await signals.leave(sid, identity, room_id)}

    @signaling.on("chat:send")
    async def chat_send(sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise SignalError("bad_request", "chat:send takes {roomId, text, clientId}")
        opened = None
        room_id = data.get("roomId")
        if room_id is None and "userId" in data:
            opened, _ = await chat.open_direct(identity, data.get("userId"))
            room_id = opened.id
        message, room, new = await chat.send(
            identity, room_id, data.get("text"), data.get("clientId"),
            reply_to=data.get("replyTo"), attachment=data.get("attachment"),
        )
        if new:
            await signals.deliver(room, "chat:message", message.to_json())
        ack = message.ack()
        if opened is not None:
            ack["roomId"] = opened.id
        return ack

    @signaling.on("chat:read")
    async def chat_read(sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise SignalError("bad_request", "chat:read takes {roomId, upToSeq}")
        room, position = await chat.mark_read(data.get("roomId"), identity, data.get("upToSeq"))
        payload = {"roomId": room.id, "userId": identity.user_id, "upToSeq": position}
        await signals.deliver(room, "chat:read", payload, skip_sid=sid)
        return {"roomId": room.id, "upToSeq": position}

    @signaling.on("chat:typing")
    async def chat_typing(sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        room_id = _room_id(data)
        on = data.get("on")
        if not isinstance(on, bool):
            raise SignalError("bad_request", "on must be true or false")
        room = await chat.check_access(room_id, identity, write=True)
        signals.typing.typing(room_id, identity.user_id, on)
        await signals.deliver(room, "chat:typing", {"roomId": room_id, "userId": identity.user_id, "on": on},
                              skip_sid=sid)
        return {"roomId": room_id, "on": on}

    return signals
