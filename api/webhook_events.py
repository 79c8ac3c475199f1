"""Outgoing webhooks, wired: the outbox and its dispatcher, the events that are
no database change of ours (from the bus), and the dead-letter view for admins.

Events written in the transaction of their change are wired where the change
is made: gifts and wallets (api/gifts.py), calls (api/calls.py), chat (the
``on_stored`` hook of chat/chat.py, set here). From the bus: ``room.started``
and ``room.ended`` (channel ``rooms``, seen by every node: written under one
id per fact, so the outbox keeps one), ``publisher.joined``/``publisher.left``
(channel ``media``, this node's own sessions). See docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from api.auth_http import require_admin
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError
from api.route_limits import RouteLimiter
from api.routing import ApiRoutes
from auth import Identity
from chat.chat import ChatMessage
from cluster import is_call_room
from rooms.rooms import RoomRecord
from store import Queries
from webhooks.dispatcher import WebhookDispatcher
from webhooks.outbox import Outbox, fact_id

log = logging.getLogger("airwave.webhooks")

routes = ApiRoutes("webhooks")

# What install() builds and what it uses of earlier features (api.components.Services).
PROVIDES: tuple[str, ...] = ("outbox", "webhook_dispatcher", "admin_limiter")
NEEDS: tuple[str, ...] = ()

MAX_ID = 64

FAILED_SCHEMA = {
    "type": "object",
    "properties": {
        "failed": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "the delivery (one event to one endpoint)"},
                    "eventId": {"type": "string"},
                    "endpoint": {"type": "string"},
                    "type": {"type": "string"},
                    "key": {"type": "string"},
                    "status": {"type": "string"},
                    "attempts": {"type": "integer"},
                    "createdAt": {"type": "number"},
                    "lastError": {"type": ["string", "null"]},
                    "event": {"type": "object", "description": "the payload as it is sent"},
                },
            },
        },
        "nextBefore": {"type": ["string", "null"]},
    },
}


def outbox_of(airwave: Airwave) -> Outbox:
    outbox: Outbox = need(airwave.services.outbox)
    return outbox


async def admin_request(request: web.Request) -> tuple[Airwave, Identity]:
    """The admin check and the admin routes' rate limit, shared by the admin routes."""
    identity = require_admin(request)
    airwave = request.app[AIRWAVE]
    await need(airwave.services.admin_limiter).check("admin", identity)
    return airwave, identity


def query_limit(request: web.Request, default: int = 50, maximum: int = 100) -> int:
    raw = request.query.get("limit", "")
    if not raw:
        return default
    if not raw.isdigit() or not (1 <= int(raw) <= maximum):
        raise ApiError(422, "bad_limit", f"limit must be an integer from 1 to {maximum}")
    return int(raw)


def query_cursor(request: web.Request, name: str = "before") -> str:
    value = request.query.get(name, "")
    if len(value) > MAX_ID:
        raise ApiError(422, "bad_cursor", f"{name} is at most {MAX_ID} characters")
    return value


@routes.get(
    "/api/v1/admin/webhooks/failed",
    summary="Dead-lettered webhook deliveries, newest first (admin; ?before=<id>&limit=1..100)",
    responses={200: "the page", 401: "no or bad token", 403: "not an admin", 422: "bad limit or cursor",
               429: "rate limited"},
    response_schema=FAILED_SCHEMA,
)
async def failed_webhooks(request: web.Request) -> web.Response:
    airwave, _ = await admin_request(request)
    limit = query_limit(request)
    page = await outbox_of(airwave).failed(before=query_cursor(request), limit=limit)
    next_before = page[-1].id if len(page) == limit else None
    return web.json_response({"failed": [e.as_json() for e in page], "nextBefore": next_before})


@routes.post(
    "/api/v1/admin/webhooks/failed/{delivery_id}/redeliver",
    summary="Queue a dead-lettered delivery again, for another retry period (admin)",
    responses={200: "queued again", 401: "no or bad token", 403: "not an admin",
               404: "no such failed delivery", 429: "rate limited"},
    response_schema=FAILED_SCHEMA["properties"]["failed"]["items"],  # type: ignore[index]
)
async def redeliver_webhook(request: web.Request) -> web.Response:
    airwave, _ = await admin_request(request)
    delivery_id = request.match_info["delivery_id"]
    queued = await outbox_of(airwave).redeliver(delivery_id[:MAX_ID])
    if queued is None:
        raise ApiError(404, "delivery_not_found", f"no failed delivery {delivery_id[:MAX_ID]!r}")
    return web.json_response(queued.as_json())


# ------------------------------------------------------------------------ bus facts


class BusFacts:
    """Bus events that become webhook events, with the peak viewers of each room."""

    def __init__(self, airwave: Airwave, outbox: Outbox) -> None:
        self.airwave = airwave
        self.outbox = outbox
        self.peak_viewers: dict[str, int] = {}

    async def on_rooms(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        room_id = str(event.get("roomId") or "")
        if not room_id:
            return
        if kind == "viewers_changed":
            count = int(event.get("count") or 0)
            self.peak_viewers[room_id] = max(self.peak_viewers.get(room_id, 0), count)
        elif kind == "stream_started" and not event.get("resumed"):
            self.peak_viewers[room_id] = 0
            stream_id = str(event.get("streamId") or "")
            owner = await self.airwave.db.fetchval("SELECT owner_id FROM rooms WHERE id = $1", room_id)
            await self.outbox.emit(
                "room.started", f"room:{room_id}",
                {"roomId": room_id, "streamId": stream_id, "ownerId": owner},
                event_id=fact_id("room.started", room_id, stream_id),
            )
        elif kind == "room_ended":
            row = await self.airwave.db.fetchrow(
                "SELECT stream_id, owner_id, live_at, ended_at FROM rooms WHERE id = $1", room_id
            )
            if row is None:
                return
            live_at, ended_at = row["live_at"], row["ended_at"]
            duration = max(0.0, float(ended_at) - float(live_at)) if live_at and ended_at else 0.0
            await self.outbox.emit(
                "room.ended", f"room:{room_id}",
                {"roomId": room_id, "streamId": row["stream_id"], "ownerId": row["owner_id"],
                 "reason": event.get("reason"), "duration": round(duration, 3),
                 "peakViewers": self.peak_viewers.pop(room_id, 0)},
                event_id=fact_id("room.ended", room_id, str(row["stream_id"]), str(ended_at)),
            )

    async def on_media(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        names = {"publisher_started": "publisher.joined", "publisher_ended": "publisher.left"}
        if kind not in names:
            return
        room_id, session_id = str(event.get("roomId") or ""), str(event.get("sessionId") or "")
        if is_call_room(room_id):
            return  # a call party's media: the call.* events tell the call's story
        data = {"roomId": room_id, "sessionId": session_id, "userId": event.get("userId")}
        if kind == "publisher_ended":
            data["reason"] = event.get("reason")
        await self.outbox.emit(
            names[kind], f"room:{room_id}", data, event_id=fact_id(names[kind], session_id)
        )

    async def on_chat_stored(self, tx: Queries, message: ChatMessage, room: RoomRecord) -> None:
        """chat.message for each member of a direct chat with no live socket (for a push)."""
        if room.type != "direct":
            return
        presence = self.airwave.services.presence
        if presence is None:
            return
        members = await tx.fetch("SELECT user_id FROM room_members WHERE room_id = $1", room.id)
        for member in (r["user_id"] for r in members):
            if member == message.user_id or await presence.sockets.count(member) > 0:
                continue
            data: dict[str, Any] = {
                "messageId": message.id, "roomId": room.id, "seq": message.seq,
                "from": message.user_id, "to": member, "createdAt": message.created_at,
                "hasAttachment": message.attachment is not None,
            }
            if self.outbox.chat_text:
                data["text"] = message.text
            await self.outbox.add(tx, "chat.message", f"room:{room.id}", data, now=message.created_at)


# ------------------------------------------------------------------------ wiring


def install(airwave: Airwave, app: web.Application) -> None:
    outbox = Outbox(airwave.db, airwave.settings)
    dispatcher = WebhookDispatcher(airwave.db, airwave.settings, outbox, airwave.node_id)
    airwave.services.outbox = outbox
    airwave.services.webhook_dispatcher = dispatcher
    airwave.services.admin_limiter = RouteLimiter(
        airwave.redis, airwave.settings.redis_prefix, rate=10.0, burst=30.0
    )
    facts = BusFacts(airwave, outbox)
    if outbox.enabled:
        airwave.bus.subscribe("rooms", facts.on_rooms)
        airwave.bus.subscribe("media", facts.on_media)

    running: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        if not outbox.enabled:
            return
        chat = airwave.services.chat
        if chat is not None:
            chat.on_stored = facts.on_chat_stored
        running.append(airwave.spawn(dispatcher.run_when(airwave.migrated), "webhook-dispatcher"))

    async def finish(app: web.Application) -> None:
        """Let the deliveries in flight end (their rows stay claimed until the lease
        runs out otherwise); whatever is left is cancelled with the other tasks."""
        dispatcher.stop()
        if running:
            await asyncio.wait(running, timeout=5)

    app.on_startup.append(start)
    app.on_shutdown.append(finish)
