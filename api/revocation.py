"""Revocation: suspend a user, or revoke one token by its id (``jti``).

``POST /api/v1/admin/users/{id}/suspend`` (``DELETE`` lifts it) and ``POST
/api/v1/admin/tokens/{jti}/revoke`` need an admin token. The decision is stored
(suspended_users, revoked_tokens) and published on the bus, channel ``auth``;
every node then refuses such tokens (TokenService's RevocationList) and ends what
they hold on it: sockets (``auth:revoked {code}``), WHIP/WHEP sessions, and for
a suspension the user's calls and every media session they own, with reason
``suspended`` or ``token_revoked``. A node loads both lists at start.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from api.auth_http import require_admin
from api.bodies import json_object
from api.components import AIRWAVE, Airwave
from api.errors import ApiError, json_response
from api.media import SESSIONS_KEY
from api.routing import ApiRoutes
from auth import Identity
from sfu import SessionNotFound

log = logging.getLogger("airwave.admin")

routes = ApiRoutes("admin")

CHANNEL = "auth"
USER_ID = r"[^/]{1,128}"
TOKEN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_REASON = 200


async def _publish(request: web.Request, event: dict[str, Any]) -> None:
    await request.app[AIRWAVE].bus.publish(CHANNEL, event)


@routes.post(
    f"/api/v1/admin/users/{{user_id:{USER_ID}}}/suspend",
    summary="Admin: suspend a user; their tokens are refused and their sockets, calls and media end",
    request={"application/json": {"type": "object", "properties": {"reason": {"type": "string"}}}},
    responses={200: "{userId, suspended}", 400: "bad reason", 401: "no token", 403: "not an admin"},
)
async def suspend_user(request: web.Request) -> web.Response:
    admin = require_admin(request)
    user_id = request.match_info["user_id"]
    body = await json_object(request) if request.can_read_body else {}
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise ApiError(400, "bad_reason", f"reason is a string of at most {MAX_REASON} characters")
    airwave = request.app[AIRWAVE]
    outbox = airwave.services.outbox
    async with airwave.db.transaction() as tx:
        await tx.execute(
            "INSERT INTO suspended_users (user_id, reason, suspended_by, created_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (user_id) DO UPDATE SET reason = excluded.reason",
            user_id, reason, admin.user_id, time.time(),
        )
        if outbox is not None:  # user.suspended for the app's backend, with the suspension
            await outbox.user_suspended(tx, user_id, reason=reason, until=None, by=admin.user_id)
    await _publish(request, {"type": "user_suspended", "userId": user_id})
    calls = airwave.services.calls
    if calls is not None:  # calls are shared state: ended once, here, for every node
        for call in await calls.live_calls_of(user_id):
            await calls.end(call.id, "suspended")
    log.info("user %s suspended by %s", user_id, admin.user_id)
    return json_response({"userId": user_id, "suspended": True})


@routes.delete(
    f"/api/v1/admin/users/{{user_id:{USER_ID}}}/suspend",
    summary="Admin: lift a user's suspension",
    responses={200: "{userId, suspended: false}", 401: "no token", 403: "not an admin"},
)
async def lift_suspension(request: web.Request) -> web.Response:
    admin = require_admin(request)
    user_id = request.match_info["user_id"]
    await request.app[AIRWAVE].db.execute("DELETE FROM suspended_users WHERE user_id = $1", user_id)
    await _publish(request, {"type": "user_restored", "userId": user_id})
    log.info("user %s restored by %s", user_id, admin.user_id)
    return json_response({"userId": user_id, "suspended": False})


@routes.post(
    "/api/v1/admin/tokens/{jti}/revoke",
    summary="Admin: revoke one token by its id (jti), e.g. a leaked OBS stream token",
    responses={200: "{jti, revoked}", 400: "not a token id", 401: "no token", 403: "not an admin"},
)
async def revoke_token(request: web.Request) -> web.Response:
    admin = require_admin(request)
    jti = request.match_info["jti"]
    if not TOKEN_ID.match(jti):
        raise ApiError(400, "bad_token_id", "a token id has 1-128 letters, digits and _ . : -")
    await request.app[AIRWAVE].db.execute(
        "INSERT INTO revoked_tokens (jti, revoked_by, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        jti, admin.user_id, time.time(),
    )
    await _publish(request, {"type": "token_revoked", "jti": jti})
    log.info("token %s revoked by %s", jti, admin.user_id)
    return json_response({"jti": jti, "revoked": True})


async def enforce(airwave: Airwave, app: web.Application, event: dict[str, Any]) -> None:
    """On every node: remember the decision, then end what this node holds on it."""
    revocations = airwave.tokens.revocations
    kind = event.get("type")
    matches: Callable[[Identity], bool]
    if kind == "user_suspended":
        user_id = str(event.get("userId", ""))
        revocations.suspended_users.add(user_id)
        code = "suspended"

        def matches(identity: Identity) -> bool:
            return identity.user_id == user_id

        owned = {s.id for s in airwave.media.sessions() if s.owner == user_id}
    elif kind == "token_revoked":
        jti = str(event.get("jti", ""))
        revocations.revoked_tokens.add(jti)
        code = "token_revoked"

        def matches(identity: Identity) -> bool:
            return identity.token_id == jti

        owned = {r.session.id for r in app[SESSIONS_KEY].values() if r.token_id == jti}
    else:
        if kind == "user_restored":
            revocations.suspended_users.discard(str(event.get("userId", "")))
        return
    ended = await airwave.signaling.end_sockets(matches, code)
    for session_id in owned:
        try:
            await airwave.media.close_session(session_id, code)
        except SessionNotFound:
            pass
    if ended or owned:
        log.info("%s: ended %d socket(s) and %d media session(s)", code, ended, len(owned))


async def load(airwave: Airwave) -> None:
    await airwave.migrated.wait()
    revocations = airwave.tokens.revocations
    rows = await airwave.db.fetch("SELECT user_id FROM suspended_users")
    revocations.suspended_users.update(r["user_id"] for r in rows)
    rows = await airwave.db.fetch("SELECT jti FROM revoked_tokens")
    revocations.revoked_tokens.update(r["jti"] for r in rows)


def install(airwave: Airwave, app: web.Application) -> None:
    async def on_event(event: dict[str, Any]) -> None:
        await enforce(airwave, app, event)

    airwave.bus.subscribe(CHANNEL, on_event)

    async def start(app: web.Application) -> None:
        airwave.spawn(load(airwave), "load revocations")

    app.on_startup.append(start)
