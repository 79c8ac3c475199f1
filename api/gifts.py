"""Gifts and wallets over REST: the catalog (admins edit it), sending a gift, the
caller's wallet and ledger, and the leaderboards. ``gift:send`` over Socket.IO
(signaling/gifts.py) shares the service and the result shape.
"""

from __future__ import annotations

import logging

from aiohttp import web

from api.auth_http import require_admin, require_identity
from api.bodies import json_object
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError, json_response
from api.routing import ApiRoutes
from gifts.gifts import GiftCatalog, GiftService, SendGift
from gifts.wallets import WalletLedger
from signaling import gifts as gift_events

log = logging.getLogger("airwave.gifts")

routes = ApiRoutes("gifts")

# What install() builds and what it uses of earlier features (api.components.Services).
PROVIDES: tuple[str, ...] = ("wallets", "gift_catalog", "gifts")
NEEDS: tuple[str, ...] = ("outbox", "rooms")


GIFT_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "coins"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "coins": {"type": "integer", "minimum": 1},
        "imageUrl": {"type": "string"},
    },
}
GIFT_PATCH_SCHEMA = {
    "type": "object",
    "properties": {**GIFT_SCHEMA["properties"], "active": {"type": "boolean"}},  # type: ignore[dict-item]
}
CATALOG_SCHEMA = {"type": "object", "properties": {"gifts": {"type": "array", "items": GIFT_SCHEMA}}}
SEND_SCHEMA = {
    "type": "object",
    "required": ["giftId", "to", "idempotencyKey"],
    "properties": {
        "giftId": {"type": "string"},
        "to": {"type": "string", "description": "the broadcaster of roomId, or the other party of callId"},
        "roomId": {"type": "string"},
        "callId": {"type": "string"},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 999, "default": 1},
        "idempotencyKey": {"type": "string", "maxLength": 128},
    },
}
SENT_SCHEMA = {
    "type": "object",
    "properties": {
        "transferId": {"type": "string"},
        "giftId": {"type": "string"},
        "from": {"type": "string"},
        "to": {"type": "string"},
        "quantity": {"type": "integer"},
        "coins": {"type": "integer", "description": "what the sender paid"},
        "creatorCoins": {"type": "integer"},
        "platformCoins": {"type": "integer"},
        "balance": {"type": "integer", "description": "the sender's coins after this gift"},
        "roomId": {"type": "string"},
        "callId": {"type": "string"},
        "createdAt": {"type": "number"},
    },
}
WALLET_SCHEMA = {
    "type": "object",
    "properties": {"coins": {"type": "integer"}, "earnings": {"type": "integer"}},
}
TRANSACTIONS_SCHEMA = {
    "type": "object",
    "properties": {
        "transactions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "kind": {"type": "string", "enum": ["gift", "topup", "refund", "chargeback", "payout", "payout_rejected"]},
                    "createdAt": {"type": "number"},
                    "details": {"type": "object"},
                    "entries": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "account": {"type": "string", "enum": ["coins", "earnings"]},
                                "amount": {"type": "integer"},
                                "balanceAfter": {"type": "integer"},
                            },
                        },
                    },
                },
            },
        },
        "nextBefore": {"type": ["string", "null"]},
    },
}
LEADERBOARD_SCHEMA = {
    "type": "object",
    "properties": {
        "entries": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"userId": {"type": "string"}, "coins": {"type": "integer"}},
            },
        }
    },
}


def _services(request: web.Request) -> tuple[GiftService, GiftCatalog, WalletLedger]:
    services = request.app[AIRWAVE].services
    return need(services.gifts), need(services.gift_catalog), need(services.wallets)


def _limit(request: web.Request, default: int, maximum: int = 100) -> int:
    raw = request.query.get("limit", "")
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not (1 <= int(raw) <= maximum):
        raise ApiError(422, "bad_limit", f"limit must be an integer from 1 to {maximum}")
    return int(raw)


# ------------------------------------------------------------------------ catalog


@routes.get(
    "/api/v1/gifts",
    summary="The gift catalog (admins may add ?includeInactive=true)",
    responses={200: "the gifts that can be sent", 401: "no or bad token"},
    response_schema=CATALOG_SCHEMA,
)
async def list_gifts(request: web.Request) -> web.Response:
    identity = require_identity(request)
    _, catalog, _ = _services(request)
    include_inactive = request.query.get("includeInactive") in ("1", "true") and identity.is_admin
    gifts = await catalog.list(include_inactive=include_inactive)
    items = [{**g.as_json(), **({} if g.active else {"active": False})} for g in gifts]
    return json_response({"gifts": items})


@routes.post(
    "/api/v1/gifts",
    summary="Add a gift to the catalog (admin)",
    request={"application/json": GIFT_SCHEMA},
    responses={201: "added", 401: "no or bad token", 403: "not an admin", 409: "the id exists",
               422: "bad fields"},
    response_schema=GIFT_SCHEMA,
)
async def create_gift(request: web.Request) -> web.Response:
    require_admin(request)
    _, catalog, _ = _services(request)
    gift = await catalog.create(await json_object(request))
    return json_response(gift.as_json(), status=201)


@routes.patch(
    "/api/v1/gifts/{gift_id}",
    summary="Change a gift's name, price or image, or revive a deleted one (admin)",
    request={"application/json": GIFT_PATCH_SCHEMA},
    responses={200: "changed", 401: "no or bad token", 403: "not an admin", 404: "no such gift",
               422: "bad fields"},
    response_schema=GIFT_SCHEMA,
)
async def update_gift(request: web.Request) -> web.Response:
    require_admin(request)
    _, catalog, _ = _services(request)
    gift = await catalog.update(request.match_info["gift_id"], await json_object(request))
    return json_response({**gift.as_json(), "active": gift.active})


@routes.delete(
    "/api/v1/gifts/{gift_id}",
    summary="Withdraw a gift from the catalog (admin); gifts already sent keep it",
    responses={204: "withdrawn", 401: "no or bad token", 403: "not an admin", 404: "no such gift"},
)
async def delete_gift(request: web.Request) -> web.Response:
    require_admin(request)
    _, catalog, _ = _services(request)
    await catalog.deactivate(request.match_info["gift_id"])
    return web.Response(status=204)


# ------------------------------------------------------------------------ sending


@routes.post(
    "/api/v1/gifts/send",
    summary="Send a gift to a live room's broadcaster or a call's other party, once per idempotencyKey",
    request={"application/json": SEND_SCHEMA},
    responses={
        200: "sent (or, for a repeated idempotencyKey, the first result; header Idempotent-Replayed)",
        400: "not JSON",
        401: "no or bad token",
        403: "not_receiver, not_call_party or blocked",
        404: "gift_not_found, room_not_found or call_not_found",
        409: "insufficient_funds, or idempotency_key_reused for another gift",
        422: "bad fields, cannot_gift_self, room_not_live or call_not_active",
    },
    response_schema=SENT_SCHEMA,
)
async def send_gift(request: web.Request) -> web.Response:
    identity = require_identity(request)
    airwave = request.app[AIRWAVE]
    gifts, _, _ = _services(request)
    sent = await gifts.send(identity, SendGift.parse(await json_object(request)))
    await gift_events.announce_gift(airwave.signaling, sent)
    headers = {"Idempotent-Replayed": "true"} if sent.replayed else None
    return json_response(sent.as_json(), headers=headers)


# ------------------------------------------------------------------------ wallet


@routes.get(
    "/api/v1/wallet",
    summary="The caller's coins (to spend) and earnings (from gifts received)",
    responses={200: "the balances", 401: "no or bad token"},
    response_schema=WALLET_SCHEMA,
)
async def get_wallet(request: web.Request) -> web.Response:
    identity = require_identity(request)
    _, _, ledger = _services(request)
    return json_response((await ledger.balance(identity.user_id)).as_json())


@routes.get(
    "/api/v1/wallet/transactions",
    summary="The caller's ledger, newest first (?before=<id>&limit=1..100)",
    responses={200: "one page of transactions", 401: "no or bad token", 422: "bad limit or before"},
    response_schema=TRANSACTIONS_SCHEMA,
)
async def list_transactions(request: web.Request) -> web.Response:
    identity = require_identity(request)
    _, _, ledger = _services(request)
    limit = _limit(request, 50)
    before = request.query.get("before", "")
    if len(before) > 64:
        raise ApiError(422, "bad_before", "before is a transaction id from a previous page")
    items = await ledger.transactions(identity.user_id, before=before, limit=limit)
    next_before = items[-1]["id"] if len(items) == limit else None
    return json_response({"transactions": items, "nextBefore": next_before})


# ------------------------------------------------------------------------ leaderboards


@routes.get(
    "/api/v1/rooms/{room_id}/leaderboard",
    summary="Top gifters of the room's current stream (?limit=1..100, default 10)",
    responses={200: "the leaderboard", 401: "no or bad token", 404: "no such room"},
    response_schema=LEADERBOARD_SCHEMA,
)
async def room_leaderboard(request: web.Request) -> web.Response:
    identity = require_identity(request)
    gifts, _, _ = _services(request)
    await gifts.check_audience(identity, request.match_info["room_id"])
    entries = await gifts.room_leaderboard(request.match_info["room_id"], _limit(request, 10))
    return json_response({"entries": entries})


@routes.get(
    "/api/v1/users/{user_id}/leaderboard",
    summary="Top gifters of a creator, all time (?limit=1..100, default 10)",
    responses={200: "the leaderboard", 401: "no or bad token"},
    response_schema=LEADERBOARD_SCHEMA,
)
async def creator_leaderboard(request: web.Request) -> web.Response:
    require_identity(request)
    gifts, _, _ = _services(request)
    entries = await gifts.creator_leaderboard(request.match_info["user_id"], _limit(request, 10))
    return json_response({"entries": entries})


# ------------------------------------------------------------------------ wiring


def install(airwave: Airwave, app: web.Application) -> None:
    outbox = airwave.services.outbox  # api/webhook_events.py, installed before
    ledger = WalletLedger(airwave.db, outbox)
    catalog = GiftCatalog(airwave.db, airwave.settings.gifts)
    gifts = GiftService(
        airwave.db, ledger, catalog, airwave.social, airwave.settings.gift_creator_share,
        need(airwave.services.rooms), outbox,
    )
    airwave.services.wallets = ledger
    airwave.services.gift_catalog = catalog
    airwave.services.gifts = gifts
    gift_events.register(airwave.signaling, gifts)

    async def seed_catalog() -> None:
        await airwave.migrated.wait()
        try:
            seeded = await catalog.seed_if_empty()
        except Exception:
            log.exception("could not seed the gift catalog")
            return
        if seeded:
            log.info("seeded the gift catalog with %d gifts", seeded)

    async def start(app: web.Application) -> None:
        # The app's own startup hook runs first and migrates a reachable database;
        # then the catalog is seeded before we serve. Otherwise, once it is migrated.
        if airwave.migrated.is_set():
            await seed_catalog()
        else:
            airwave.spawn(seed_catalog(), "seed-gift-catalog")

    app.on_startup.append(start)
