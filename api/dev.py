"""Demo sign-in for the web app at ``/``, in development mode only (``airwave serve --dev``).

``POST /api/v1/dev/token {name}`` mints a token for a new demo user (room
``*``, publish and subscribe, never admin), so that the pages work without an
external auth service. ``GET /api/v1/dev/online`` lists who has a socket
open, for the Call page. When the gifts feature is installed, each new demo
user gets a one-time welcome top-up of :data:`WELCOME_COINS` through the
gifts feature's own ledger, so that a gift can be sent at once.

None of these routes exist unless development mode was asked for: the table
below adds itself to the router only when ``settings.dev`` is set (the OpenAPI
document still describes them, marked development only).
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from aiohttp import web

from api.auth_http import require_identity
from api.bodies import json_object
from api.components import AIRWAVE, Airwave
from api.errors import ApiError, json_response
from api.routing import ApiRoutes
from auth import Grants
from gifts.wallets import WalletLedger

log = logging.getLogger("airwave.dev")

DEMO_TOKEN_TTL = 12 * 3600
DEMO_GRANTS = Grants(room="*", publish=True, subscribe=True, admin=False)
MAX_NAME = 40
WELCOME_COINS = 100


class DevelopmentRoutes(ApiRoutes):
    """An ApiRoutes table that joins the router only in development mode (``--dev``)."""

    def add_to(self, app: web.Application) -> None:
        if app[AIRWAVE].settings.dev:
            super().add_to(app)


routes = DevelopmentRoutes("dev")

TOKEN_SCHEMA = {
    "type": "object",
    "required": ["token", "userId", "name"],
    "properties": {
        "token": {"type": "string"},
        "userId": {"type": "string"},
        "name": {"type": "string"},
        "coins": {"type": "integer", "description": "welcome coins credited, 0 without the gifts feature"},
    },
}
ONLINE_SCHEMA = {
    "type": "object",
    "properties": {
        "users": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"userId": {"type": "string"}, "name": {"type": "string"}},
            },
        }
    },
}


def demo_name(data: Any) -> str:
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "bad_name", "send {\"name\": \"...\"}: a display name is required")
    name = " ".join(name.split())
    if len(name) > MAX_NAME:
        raise ApiError(400, "bad_name", f"a name has at most {MAX_NAME} characters")
    return name


def demo_user_id(name: str) -> str:
    """``demo-<name as letters and digits>-<6 hex>``: readable in logs, new for every sign-in."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:20] or "user"
    return f"demo-{slug}-{secrets.token_hex(3)}"


def wallet_ledger(airwave: Airwave) -> WalletLedger | None:
    """The gifts feature's WalletLedger, if installed."""
    return airwave.services.wallets


async def welcome_coins(airwave: Airwave, user_id: str) -> int:
    ledger = wallet_ledger(airwave)
    if ledger is None:
        return 0
    await ledger.topup(f"dev-welcome:{user_id}", user_id, WELCOME_COINS)
    return WELCOME_COINS


@routes.post(
    "/api/v1/dev/token",
    summary="Development mode only (`airwave serve --dev`): a token for a new demo user",
    auth=False,
    request={"application/json": {
        "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}},
    }},
    responses={200: "a token with publish and subscribe on every room, no admin", 400: "no usable name"},
    response_schema=TOKEN_SCHEMA,
)
async def dev_token(request: web.Request) -> web.Response:
    airwave = request.app[AIRWAVE]
    name = demo_name(await json_object(request))
    user_id = demo_user_id(name)
    token = airwave.tokens.mint(user_id, name=name, grants=DEMO_GRANTS, ttl=DEMO_TOKEN_TTL)
    coins = await welcome_coins(airwave, user_id)
    log.info("demo user %s (%s) signed in", user_id, name)
    return json_response({"token": token, "userId": user_id, "name": name, "coins": coins})


@routes.get(
    "/api/v1/dev/online",
    summary="Development mode only (`airwave serve --dev`): users with a socket open on this node",
    responses={200: "everyone online but the caller", 401: "no token"},
    response_schema=ONLINE_SCHEMA,
)
async def dev_online(request: web.Request) -> web.Response:
    identity = require_identity(request)
    airwave = request.app[AIRWAVE]
    users: dict[str, str] = {}
    for other in list(airwave.signaling.identities.values()):
        if other.user_id != identity.user_id:
            users[other.user_id] = other.name or other.user_id
    listed = [{"userId": uid, "name": name} for uid, name in sorted(users.items(), key=lambda u: u[1].lower())]
    return json_response({"users": listed})
