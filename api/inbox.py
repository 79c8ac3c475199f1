"""The inbox over REST: ``GET /api/v1/chats`` lists the caller's direct and group
chats (last message, unread count, the other party), most recent first;
``DELETE /api/v1/chats/{roomId}`` hides a direct chat or leaves a group.
(``POST /api/v1/chats``, opening a direct chat, is in api/rooms.py.)"""

from __future__ import annotations

from aiohttp import web

from api.auth_http import require_identity
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError, refused
from api.route_limits import RouteLimiter
from api.routing import ApiRoutes
from api.webhook_events import query_cursor, query_limit
from auth import Identity
from chat.inbox import Inbox
from rooms.rooms import RoomError

routes = ApiRoutes("rooms")

# What install() builds and what it uses of earlier features (api.components.Services).
PROVIDES: tuple[str, ...] = ("inbox", "inbox_limiter")
NEEDS: tuple[str, ...] = ("rooms",)

_MESSAGE_SCHEMA = {
    "type": ["object", "null"],
    "properties": {
        "id": {"type": "string"},
        "seq": {"type": "integer"},
        "userId": {"type": "string"},
        "text": {"type": "string"},
        "createdAt": {"type": "number"},
        "replyTo": {"type": "string"},
        "attachment": {
            "type": "object",
            "properties": {"url": {"type": "string"}, "mime": {"type": "string"}, "size": {"type": "integer"}},
        },
    },
}
INBOX_SCHEMA = {
    "type": "object",
    "properties": {
        "chats": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "roomId": {"type": "string"},
                    "type": {"type": "string", "enum": ["direct", "group"]},
                    "title": {"type": "string"},
                    "otherUserId": {"type": ["string", "null"], "description": "direct chats"},
                    "lastMessage": _MESSAGE_SCHEMA,
                    "unread": {"type": "integer", "description": "messages from others after your read position"},
                    "activityAt": {"type": "number"},
                },
            },
        },
        "nextBefore": {"type": ["string", "null"]},
    },
}


async def _caller(request: web.Request) -> tuple[Airwave, Identity]:
    identity = require_identity(request)
    airwave = request.app[AIRWAVE]
    await need(airwave.services.inbox_limiter).check("inbox", identity)
    return airwave, identity


def _refused(exc: RoomError) -> ApiError:
    """The inbox's routes answer bad input as 422."""
    return refused(exc, invalid_status=422)


@routes.get(
    "/api/v1/chats",
    summary="The caller's direct and group chats, most recent first (?before=<nextBefore>&limit=1..100)",
    responses={200: "a page", 401: "no or bad token", 422: "bad limit or cursor", 429: "rate limited"},
    response_schema=INBOX_SCHEMA,
)
async def list_chats(request: web.Request) -> web.Response:
    airwave, identity = await _caller(request)
    inbox: Inbox = need(airwave.services.inbox)
    try:
        chats, next_before = await inbox.page(
            identity.user_id, before=query_cursor(request), limit=query_limit(request, default=20)
        )
    except RoomError as exc:
        raise _refused(exc) from None
    return web.json_response({"chats": chats, "nextBefore": next_before})


@routes.delete(
    "/api/v1/chats/{room_id}",
    summary="Hide a direct chat (until its next message) or leave a group chat",
    responses={200: "{roomId, result: hidden|left}", 401: "no or bad token",
               404: "no such chat of yours", 422: "the owner cannot leave their group", 429: "rate limited"},
    response_schema={"type": "object", "properties": {"roomId": {"type": "string"},
                                                      "result": {"type": "string", "enum": ["hidden", "left"]}}},
)
async def remove_chat(request: web.Request) -> web.Response:
    airwave, identity = await _caller(request)
    room_id = request.match_info["room_id"][:128]
    inbox: Inbox = need(airwave.services.inbox)
    try:
        result = await inbox.remove(identity, room_id)
    except RoomError as exc:
        raise _refused(exc) from None
    return web.json_response({"roomId": room_id, "result": result})


def install(airwave: Airwave, app: web.Application) -> None:
    airwave.services.inbox = Inbox(airwave.db, need(airwave.services.rooms))
    airwave.services.inbox_limiter = RouteLimiter(
        airwave.redis, airwave.settings.redis_prefix, rate=10.0, burst=30.0
    )
