"""REST for live rooms, chat history, direct chats and presence.

Also wires the feature: the room registry follows the bus ``media`` channel,
signaling/rooms.py registers the Socket.IO events, and the sweeper of
disappearing messages runs in the background. See docs/rooms.md.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.auth_http import require_identity
from api.bodies import json_object
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError, json_response
from api.limits import check_rate
from api.routing import ApiRoutes
from auth import Identity
from chat.chat import DEFAULT_PAGE, MAX_PAGE, ChatService
from events.timers import InProcessTimers, RedisTimers, TimerService
from presence.presence import PresenceService
from presence.redis_sockets import RedisSocketCounter
from rooms.rate_limit import InProcessTokenBucket
from rooms.redis_state import RedisTokenBucket, RedisViewerCounter
from rooms.rooms import RoomError, RoomRegistry, TaskTimers
from signaling.rooms import RoomSignals, register

routes = ApiRoutes("rooms")

# What install() builds and what it uses of earlier features (api.components.Services).
PROVIDES: tuple[str, ...] = ("rooms", "chat", "presence", "room_signals")
NEEDS: tuple[str, ...] = ()

SWEEP_INTERVAL = 1.0
_ROOM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["live", "group", "direct", "call"]},
        "title": {"type": "string"},
        "public": {"type": "boolean"},
        "status": {"type": "string", "enum": ["idle", "live", "ended"]},
        "ownerId": {"type": ["string", "null"]},
        "viewerCount": {"type": "integer"},
        "createdAt": {"type": "number"},
        "maxViewers": {"type": ["integer", "null"]},
        "chatTtlSeconds": {"type": ["number", "null"]},
        "streamId": {"type": ["string", "null"]},
        "liveAt": {"type": ["number", "null"]},
        "endedAt": {"type": ["number", "null"]},
        "recording": {"type": "boolean"},
        "recordingId": {"type": ["string", "null"]},
        "record": {"type": "boolean"},
    },
}
_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "seq": {"type": "integer"},
        "roomId": {"type": "string"},
        "userId": {"type": "string"},
        "text": {"type": "string"},
        "createdAt": {"type": "number"},
    },
}
_JSON = "application/json"


async def _user_field(request: web.Request) -> str:
    """``userId`` from a JSON body, or 400 ``bad_user``."""
    user_id = (await json_object(request)).get("userId")
    if not isinstance(user_id, str) or not user_id:
        raise ApiError(400, "bad_user", "userId must be a user id")
    return user_id


def _registry(request: web.Request) -> RoomRegistry:
    return need(request.app[AIRWAVE].services.rooms)


def _chat(request: web.Request) -> ChatService:
    return need(request.app[AIRWAVE].services.chat)


def _signals(request: web.Request) -> RoomSignals:
    return need(request.app[AIRWAVE].services.room_signals)


MAX_INT_PARAM = 2**31 - 1


def _int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if raw.isascii() and len(raw) <= 12 else -1
    except ValueError:
        raise ApiError(400, f"bad_{name}", f"{name} must be an integer") from None
    if not 0 <= value <= MAX_INT_PARAM:
        raise ApiError(400, f"bad_{name}", f"{name} must be an integer from 0 to {MAX_INT_PARAM}")
    return value


async def _viewable_room(request: web.Request, identity: Identity) -> Any:
    try:
        return await _registry(request).admit(request.match_info["id"], identity)
    except RoomError:  # not yours to see: as if there were no such room
        raise ApiError(404, "room_not_found", f"no room {request.match_info['id']!r}") from None


def _room_settings(body: dict[str, Any]) -> dict[str, Any]:
    names = {"title": "title", "public": "public", "maxViewers": "max_viewers", "chatTtlSeconds": "chat_ttl_seconds"}
    changes = {names[k]: v for k, v in body.items() if k in names}
    if "public" in changes and not isinstance(changes["public"], bool):
        raise ApiError(400, "bad_public", "public must be true or false")
    return changes


# --------------------------------------------------------------------------- rooms


@routes.post(
    "/api/v1/rooms",
    summary="Create a live or group room; the caller owns it",
    request={_JSON: {"type": "object", "required": ["type"], "properties": {
        "type": {"enum": ["live", "group"]}, "title": {"type": "string"}, "public": {"type": "boolean"},
        "maxViewers": {"type": "integer"}, "chatTtlSeconds": {"type": "number"}}}},
    responses={201: "the room", 400: "bad input", 401: "no token"},
    response_schema=_ROOM_SCHEMA,
)
async def create_room(request: web.Request) -> web.Response:
    identity = require_identity(request)
    await check_rate(request.app[AIRWAVE].limits, "actions", identity.user_id)
    body = await json_object(request)
    settings = _room_settings(body)
    registry = _registry(request)
    room = await registry.create(
        identity.user_id,
        body.get("type", ""),
        settings.get("title", ""),
        settings.get("public", True),
        settings.get("max_viewers"),
        settings.get("chat_ttl_seconds"),
    )
    return json_response(await registry.to_json(room), status=201)


@routes.get(
    "/api/v1/rooms",
    summary="Public rooms by status (live: most viewers first); ?status=&limit=&cursor=",
    responses={200: "{rooms, nextCursor}", 400: "bad status, limit or cursor"},
)
async def list_rooms(request: web.Request) -> web.Response:
    require_identity(request)
    limit = _int_param(request, "limit", 20) or 0
    if not 1 <= limit <= 100:
        raise ApiError(400, "bad_limit", "limit must be 1-100")
    offset = _int_param(request, "cursor", 0) or 0
    rooms, next_offset = await _registry(request).list(request.query.get("status", "live"), limit, offset)
    return json_response({"rooms": rooms, "nextCursor": str(next_offset) if next_offset else None})


@routes.get(
    "/api/v1/rooms/{id}", summary="One room with its viewer count",
    responses={200: "the room", 404: "no such room (or not yours to see)"}, response_schema=_ROOM_SCHEMA,
)
async def get_room(request: web.Request) -> web.Response:
    room = await _viewable_room(request, require_identity(request))
    body = await _registry(request).to_json(room)
    recordings = request.app[AIRWAVE].services.recordings  # api/recordings.py
    if recordings is not None:
        body.update(await recordings.room_fields(room.id))
    return json_response(body)


@routes.patch(
    "/api/v1/rooms/{id}", summary="Owner: change title, public, maxViewers, chatTtlSeconds",
    request={_JSON: {"type": "object"}},
    responses={200: "the room", 400: "bad input", 403: "not the owner", 404: "no such room"},
    response_schema=_ROOM_SCHEMA,
)
async def patch_room(request: web.Request) -> web.Response:
    identity = require_identity(request)
    changes = _room_settings(await json_object(request))
    registry = _registry(request)
    room = await registry.patch(request.match_info["id"], identity, changes)
    return json_response(await registry.to_json(room))


@routes.post(
    "/api/v1/rooms/{id}/end", summary="Owner or admin: end the room, its media and its audience",
    responses={200: "the ended room", 403: "not the owner", 404: "no such room"}, response_schema=_ROOM_SCHEMA,
)
async def end_room(request: web.Request) -> web.Response:
    identity = require_identity(request)
    registry = _registry(request)
    room = await registry.end(request.match_info["id"], identity)
    return json_response(await registry.to_json(room))


@routes.get(
    "/api/v1/rooms/{id}/participants",
    summary="Who is in a room: its owner, members and signed-in viewers, and anonymous viewers",
    responses={200: "{participants: [{userId, role}], anonymousViewers}", 404: "no such room"},
)
async def participants(request: web.Request) -> web.Response:
    room = await _viewable_room(request, require_identity(request))
    registry = _registry(request)
    people: dict[str, str] = {}
    if room.type != "live":
        for user_id in await _chat(request).members(room.id):
            people[user_id] = "member"
    anonymous = 0
    for viewer in await registry.viewers.viewers(room.id):
        kind, _, ident = viewer.partition(":")
        if kind == "user":
            people.setdefault(ident, "viewer")
        else:
            anonymous += 1
    if room.owner_id:
        people[room.owner_id] = "owner"
    listing = [{"userId": u, "role": r} for u, r in sorted(people.items())]
    return json_response({"participants": listing, "anonymousViewers": anonymous})


@routes.post(
    "/api/v1/rooms/{id}/kick", summary="Owner or admin: remove a viewer and ban them for a while",
    request={_JSON: {"type": "object", "required": ["userId"], "properties": {"userId": {"type": "string"}}}},
    responses={200: "{roomId, userId, bannedUntil}", 400: "bad input", 403: "not the owner", 404: "no such room"},
)
async def kick(request: web.Request) -> web.Response:
    identity = require_identity(request)
    user_id = await _user_field(request)
    until = await _registry(request).kick(request.match_info["id"], identity, user_id)
    return json_response({"roomId": request.match_info["id"], "userId": user_id, "bannedUntil": until})


@routes.post(
    "/api/v1/rooms/{id}/members",
    summary="Add a member to a group room (the owner adds anyone; anyone joins a public group)",
    request={_JSON: {"type": "object", "required": ["userId"], "properties": {"userId": {"type": "string"}}}},
    responses={200: "{roomId, userId}", 400: "bad input", 403: "not allowed", 404: "no such room"},
)
async def add_member(request: web.Request) -> web.Response:
    identity = require_identity(request)
    user_id = await _user_field(request)
    await _registry(request).add_member(request.match_info["id"], identity, user_id)
    return json_response({"roomId": request.match_info["id"], "userId": user_id})


@routes.delete(
    "/api/v1/rooms/{id}/members/{userId}", summary="Leave a group room, or (owner) remove a member",
    responses={200: "{removed}", 403: "not allowed", 404: "no such room"},
)
async def remove_member(request: web.Request) -> web.Response:
    identity = require_identity(request)
    removed = await _registry(request).remove_member(
        request.match_info["id"], identity, request.match_info["userId"]
    )
    return json_response({"removed": removed})


# ---------------------------------------------------------------------------- chat


@routes.get(
    "/api/v1/rooms/{id}/messages",
    summary="Chat history by seq, ascending: ?after= (older to newer), ?before=, or the newest page; limit <= 100",
    responses={200: "{messages}", 400: "bad paging", 403: "not a member or banned", 404: "no such room"},
    response_schema={"type": "object", "properties": {"messages": {"type": "array", "items": _MESSAGE_SCHEMA}}},
)
async def messages(request: web.Request) -> web.Response:
    identity = require_identity(request)
    limit = _int_param(request, "limit", DEFAULT_PAGE) or 0
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, "bad_limit", f"limit must be 1-{MAX_PAGE}")
    page = await _chat(request).history(
        request.match_info["id"],
        identity,
        before=_int_param(request, "before"),
        after=_int_param(request, "after"),
        limit=limit,
    )
    return json_response({"messages": [m.to_history() for m in page]})


@routes.delete(
    "/api/v1/rooms/{id}/messages/{messageId}",
    summary="Delete a chat message (its author, the room's owner or an admin); chat:deleted to the room",
    responses={200: "{roomId, id}", 403: "not allowed", 404: "no such room or message"},
)
async def delete_message(request: web.Request) -> web.Response:
    identity = require_identity(request)
    message_id = request.match_info["messageId"]
    room = await _chat(request).delete(request.match_info["id"], identity, message_id)
    payload = {"roomId": room.id, "id": message_id}
    await _signals(request).deliver(room, "chat:deleted", payload)
    return json_response(payload)


@routes.post(
    "/api/v1/chats", summary="The direct chat with a user (the same room for the same pair)",
    request={_JSON: {"type": "object", "required": ["userId"], "properties": {"userId": {"type": "string"}}}},
    responses={200: "the existing room", 201: "created", 400: "bad input", 403: "blocked",
               404: "unknown user"},
    response_schema=_ROOM_SCHEMA,
)
async def open_chat(request: web.Request) -> web.Response:
    identity = require_identity(request)
    body = await json_object(request)
    room, created = await _chat(request).open_direct(identity, body.get("userId"))
    return json_response(await _registry(request).to_json(room), status=201 if created else 200)


# ------------------------------------------------------------------------ presence


@routes.get(
    "/api/v1/users/{id}/presence", summary="Whether a user is online, and when they were last seen",
    responses={200: "{userId, online, lastSeen}", 404: "unknown user, or not a contact of the caller"},
    response_schema={"type": "object", "properties": {
        "userId": {"type": "string"}, "online": {"type": "boolean"}, "lastSeen": {"type": ["number", "null"]}}},
)
async def presence(request: web.Request) -> web.Response:
    identity = require_identity(request)
    presence_service = need(request.app[AIRWAVE].services.presence)
    user_id = request.match_info["id"]
    status = await presence_service.status(user_id)
    if status is None or not await presence_service.may_see(identity, user_id):  # strangers: 404
        raise ApiError(404, "user_not_found", f"no user {request.match_info['id']!r}")
    return json_response(status.to_json())


# -------------------------------------------------------------------------- wiring


def install(airwave: Airwave, app: web.Application) -> None:
    settings = airwave.settings
    timers = TaskTimers(airwave.spawn)
    redis, prefix = airwave.redis, settings.redis_prefix
    deadlines: TimerService = RedisTimers(redis, prefix, "rooms") if redis else InProcessTimers()
    registry = RoomRegistry(
        airwave.db, airwave.bus, settings, timers,
        viewers=RedisViewerCounter(redis, prefix) if redis else None, deadlines=deadlines,
    )
    limiter = RedisTokenBucket(redis, prefix, settings.chat_rate) if redis else InProcessTokenBucket(settings.chat_rate)
    chat = ChatService(airwave.db, registry, airwave.social, settings, limiter)
    presence_service = PresenceService(
        airwave.db, RedisSocketCounter(redis, prefix, airwave.node_id) if redis else None
    )

    async def start_deadlines(app: web.Application) -> None:
        if isinstance(deadlines, RedisTimers):
            deadlines.start()

    async def close_deadlines(app: web.Application) -> None:
        await deadlines.close()

    app.on_startup.append(start_deadlines)
    app.on_cleanup.append(close_deadlines)
    signals = register(
        airwave.signaling, registry, chat, presence_service, airwave.social, airwave.bus, timers
    )
    airwave.services.rooms = registry
    airwave.services.chat = chat
    airwave.services.presence = presence_service
    airwave.services.room_signals = signals
    airwave.bus.subscribe("media", registry.on_media_event)
    airwave.bus.subscribe("rooms", registry.on_room_event)

    async def start_sweeper(app: web.Application) -> None:
        airwave.spawn(chat.run_sweeper(SWEEP_INTERVAL), "chat sweeper")

    app.on_startup.append(start_sweeper)
