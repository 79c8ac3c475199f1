"""Calls over REST, blocks and matches; wires the call service, its timers and events.

- ``POST /api/v1/calls {to, media}``: place a call without a socket at hand
  (the callee's sockets get ``call:incoming`` as with ``call:initiate``).
- ``GET /api/v1/calls/{id}``: the record of a call one took part in.
- ``GET /api/v1/calls?limit=&before=``: one's calls, newest first; ``before``
  is the ``next`` cursor (a call id) of the previous page.
- ``POST/DELETE /api/v1/users/{id}/block``: block or unblock a user.
- ``PUT/DELETE /api/v1/matches {userA, userB}`` (admin): register or remove a
  match; a new one sends ``match:created`` to both users' sockets.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from api.auth_http import require_admin, require_identity
from api.bodies import json_object
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError, json_response
from api.ice import ice_servers_for
from api.limits import check_rate
from api.routing import ApiRoutes
from calls.calls import CallError, CallService
from calls.redis_state import RedisCallLocks, RedisPartySockets
from events.timers import InProcessTimers, RedisTimers, TimerService
from signaling.calls import CallSignaling
from signaling.calls import register as register_call_events
from signaling.server import user_room

log = logging.getLogger("airwave.calls")

routes = ApiRoutes("calls")

# What install() builds and what it uses of earlier features (api.components.Services).
PROVIDES: tuple[str, ...] = ("calls", "call_timers", "call_signaling")
NEEDS: tuple[str, ...] = ("presence", "outbox")

CALL_ID = r"[A-Za-z0-9_-]{1,128}"
USER_ID = r"[^/]{1,128}"
DEFAULT_PAGE = 20
MAX_PAGE = 100

CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "callerId": {"type": "string"},
        "calleeId": {"type": "string"},
        "media": {"type": "string", "enum": ["audio", "video"]},
        "status": {"type": "string", "enum": ["ringing", "active", "ended"]},
        "endReason": {"type": ["string", "null"]},
        "createdAt": {"type": "number"},
        "answeredAt": {"type": ["number", "null"]},
        "endedAt": {"type": ["number", "null"]},
        "endsAt": {"type": ["number", "null"]},
        "duration": {"type": "number", "description": "billed seconds, answered to ended"},
        "extensions": {"type": "integer"},
        "upgradedAt": {"type": ["number", "null"]},
    },
}
_JSON = "application/json"


def _calls(request: web.Request) -> CallService:
    return need(request.app[AIRWAVE].services.calls)


def _user_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise ApiError(400, "bad_request", f"'{name}' must be a user id")
    return value


# ----------------------------------------------------------------------- calls


@routes.post(
    "/api/v1/calls",
    summary="Place a call (the callee's sockets get call:incoming)",
    request={_JSON: {"type": "object", "required": ["to"],
                     "properties": {"to": {"type": "string"}, "media": {"type": "string", "enum": ["audio", "video"]}}}},
    responses={201: "the call, ringing (or ended at once as busy)", 400: "bad input or calling yourself",
               403: "blocked or not matched", 404: "unknown user", 409: "you are already in a call"},
    response_schema=CALL_SCHEMA,
)
async def create_call(request: web.Request) -> web.Response:
    identity = require_identity(request)
    airwave = request.app[AIRWAVE]
    await check_rate(airwave.limits, "actions", identity.user_id)
    body = await json_object(request)
    await airwave.social.seen(identity)
    host = request.url.host or None
    call = await _calls(request).initiate(identity.user_id, body.get("to"), body.get("media", "video"),
                                          stun_host=host)
    payload = {
        **call.to_json(),
        "ringsUntil": _calls(request).rings_until(call),
        "iceServers": ice_servers_for(airwave, identity.user_id, request),
    }
    return json_response(payload, status=201)


@routes.get(
    f"/api/v1/calls/{{call_id:{CALL_ID}}}",
    summary="The record of a call you took part in",
    responses={200: "the call", 403: "someone else's call", 404: "no such call"},
    response_schema=CALL_SCHEMA,
)
async def get_call(request: web.Request) -> web.Response:
    identity = require_identity(request)
    call_id = request.match_info["call_id"]
    if identity.is_admin:
        call = await _calls(request).get(call_id)
        if call is None:
            raise CallError("call_not_found", "no such call")
    else:
        call = await _calls(request).require(call_id, identity.user_id)
    return json_response(call.to_json())


@routes.get(
    "/api/v1/calls",
    summary="Your calls, newest first (?limit=1-100, ?before=<next cursor>)",
    responses={200: "a page of calls and the next cursor (null on the last page)", 400: "bad limit",
               404: "unknown before cursor"},
    response_schema={"type": "object", "properties": {
        "calls": {"type": "array", "items": CALL_SCHEMA}, "next": {"type": ["string", "null"]}}},
)
async def list_calls(request: web.Request) -> web.Response:
    identity = require_identity(request)
    raw_limit = request.query.get("limit", "")
    try:
        limit = int(raw_limit) if raw_limit and len(raw_limit) <= 6 else DEFAULT_PAGE
    except ValueError:
        raise ApiError(400, "bad_limit", "limit must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, "bad_limit", f"limit must be 1-{MAX_PAGE}")
    before = request.query.get("before") or None
    calls, next_cursor = await _calls(request).history(identity.user_id, limit, before)
    return json_response({"calls": [c.to_json() for c in calls], "next": next_cursor})


# ---------------------------------------------------------------------- blocks


@routes.post(
    f"/api/v1/users/{{user_id:{USER_ID}}}/block",
    summary="Block a user: no calls, messages or gifts between you",
    responses={200: "blocked", 400: "blocking yourself"},
)
async def block_user(request: web.Request) -> web.Response:
    identity = require_identity(request)
    other = request.match_info["user_id"]
    if other == identity.user_id:
        raise ApiError(400, "bad_request", "you cannot block yourself")
    await request.app[AIRWAVE].social.block(identity.user_id, other)
    return json_response({"userId": other, "blocked": True})


@routes.delete(
    f"/api/v1/users/{{user_id:{USER_ID}}}/block",
    summary="Unblock a user",
    responses={200: "not blocked (any more)"},
)
async def unblock_user(request: web.Request) -> web.Response:
    identity = require_identity(request)
    other = request.match_info["user_id"]
    removed = await request.app[AIRWAVE].social.unblock(identity.user_id, other)
    return json_response({"userId": other, "blocked": False, "removed": removed})


# --------------------------------------------------------------------- matches

_MATCH_BODY = {_JSON: {"type": "object", "required": ["userA", "userB"],
                       "properties": {"userA": {"type": "string"}, "userB": {"type": "string"}}}}


async def _pair(request: web.Request) -> tuple[str, str]:
    require_admin(request)
    body = await json_object(request)
    user_a, user_b = _user_id(body.get("userA"), "userA"), _user_id(body.get("userB"), "userB")
    if user_a == user_b:
        raise ApiError(400, "bad_request", "a match needs two different users")
    return user_a, user_b


@routes.put(
    "/api/v1/matches",
    summary="Register a match (admin); a new one sends match:created to both users",
    request=_MATCH_BODY,
    responses={200: "matched; created tells whether it is new", 400: "bad input", 403: "not an admin"},
)
async def put_match(request: web.Request) -> web.Response:
    user_a, user_b = await _pair(request)
    airwave = request.app[AIRWAVE]
    created = await airwave.social.match(user_a, user_b)
    if created:
        at = time.time()
        for me, other in ((user_a, user_b), (user_b, user_a)):
            await airwave.signaling.sio.emit("match:created", {"userId": other, "at": at}, room=user_room(me))
    return json_response({"userA": user_a, "userB": user_b, "matched": True, "created": created})


@routes.delete(
    "/api/v1/matches",
    summary="Remove a match (admin)",
    request=_MATCH_BODY,
    responses={200: "unmatched; removed tells whether there was one", 400: "bad input", 403: "not an admin"},
)
async def delete_match(request: web.Request) -> web.Response:
    user_a, user_b = await _pair(request)
    removed = await request.app[AIRWAVE].social.unmatch(user_a, user_b)
    return json_response({"userA": user_a, "userB": user_b, "matched": False, "removed": removed})


# ---------------------------------------------------------------------- wiring


def install(airwave: Airwave, app: web.Application) -> None:
    prefix = airwave.settings.redis_prefix
    presence = airwave.services.presence

    async def callee_online(user_id: str) -> bool:
        return presence is not None and await presence.sockets.count(user_id) > 0

    webhooks: dict[str, Any] = {"outbox": airwave.services.outbox, "is_online": callee_online}
    if airwave.redis is not None:  # deadlines, busy locks and grace counts shared by every node
        redis_timers = RedisTimers(airwave.redis, prefix, "calls")
        timers: TimerService = redis_timers
        calls = CallService(
            airwave.db, airwave.bus, airwave.social, airwave.settings, timers,
            locks=RedisCallLocks(airwave.redis, prefix),
            party_sockets=RedisPartySockets(airwave.redis, prefix, airwave.node_id),
            **webhooks,
        )
        app.on_startup.append(lambda app: _start_polling(redis_timers))
    else:
        timers = InProcessTimers()
        calls = CallService(airwave.db, airwave.bus, airwave.social, airwave.settings, timers, **webhooks)
    call_signaling = register_call_events(
        airwave.signaling, calls, airwave.media, airwave.ice, airwave.bus, airwave.cluster.calls,
    )
    airwave.services.calls = calls
    airwave.services.call_timers = timers
    airwave.services.call_signaling = call_signaling
    airwave.engine_events.renegotiation_needed.append(call_signaling.renegotiate)
    single_node = airwave.redis is None

    async def end_stale_calls(app: web.Application) -> None:
        """One node, a fresh process: calls left live by the previous one are over."""
        if single_node and airwave.migrated.is_set():
            ended = await calls.end_live_calls("server_shutdown")
            if ended:
                log.info("ended %d calls left live by the previous process", len(ended))

    async def end_calls(app: web.Application) -> None:
        await _end_for_shutdown(call_signaling, single_node)

    async def close_timers(app: web.Application) -> None:
        await timers.close()

    app.on_startup.append(end_stale_calls)
    app.on_shutdown.append(end_calls)
    app.on_cleanup.append(close_timers)


async def _start_polling(timers: RedisTimers) -> None:
    timers.start()


async def _end_for_shutdown(call_signaling: CallSignaling, single_node: bool) -> None:
    try:
        await call_signaling.end_calls_for_shutdown(all_calls=single_node)
    except Exception:  # a database gone at shutdown must not stop the rest of it
        log.exception("could not end calls at shutdown")
