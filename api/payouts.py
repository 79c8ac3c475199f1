"""Creator payouts over REST: a creator requests one from their earnings, an admin
approves or rejects it, the app's backend (an admin token) confirms it paid.
See docs/gifts.md ("Payouts")."""

from __future__ import annotations

from aiohttp import web

from api.auth_http import require_identity
from api.bodies import json_object
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError
from api.route_limits import RouteLimiter
from api.routing import ApiRoutes
from api.webhook_events import admin_request, query_cursor, query_limit
from auth import Identity
from gifts.payouts import Payout, Payouts

routes = ApiRoutes("payouts")

# What install() builds and what it uses of earlier features (api.components.Services).
PROVIDES: tuple[str, ...] = ("payouts", "payout_limiter")
NEEDS: tuple[str, ...] = ("wallets", "outbox")

STATUSES = ("requested", "approved", "rejected", "paid")

PAYOUT_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "userId": {"type": "string"},
        "coins": {"type": "integer"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "createdAt": {"type": "number"},
        "decidedAt": {"type": ["number", "null"]},
        "decidedBy": {"type": ["string", "null"]},
        "note": {"type": ["string", "null"]},
        "paidAt": {"type": ["number", "null"]},
        "reference": {"type": ["string", "null"]},
    },
}
PAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "payouts": {"type": "array", "items": PAYOUT_SCHEMA},
        "nextBefore": {"type": ["string", "null"]},
        "earnings": {"type": "integer"},
        "withdrawable": {"type": "integer", "description": "earnings older than the hold time"},
        "minimum": {"type": "integer"},
    },
}
REQUEST_SCHEMA = {
    "type": "object",
    "required": ["coins", "idempotencyKey"],
    "properties": {
        "coins": {"type": "integer", "minimum": 1},
        "idempotencyKey": {"type": "string", "maxLength": 128},
    },
}
DECISION_SCHEMA = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 500}}}
PAID_SCHEMA = {
    "type": "object",
    "properties": {"reference": {"type": "string", "maxLength": 128,
                                 "description": "your payment's reference"}},
}


def _service(request: web.Request) -> Payouts:
    payouts: Payouts = need(request.app[AIRWAVE].services.payouts)
    return payouts


async def _limited(request: web.Request) -> Identity:
    identity = require_identity(request)
    await need(request.app[AIRWAVE].services.payout_limiter).check("payouts", identity)
    return identity


def _answer(payout: Payout, status: int = 200) -> web.Response:
    if payout.replayed:
        return web.json_response(payout.as_json(), headers={"Idempotent-Replayed": "true"})
    return web.json_response(payout.as_json(), status=status)


def _page(payouts: list[Payout], limit: int) -> dict[str, object]:
    return {
        "payouts": [p.as_json() for p in payouts],
        "nextBefore": payouts[-1].id if len(payouts) == limit else None,
    }


@routes.get(
    "/api/v1/payouts",
    summary="The caller's payouts, newest first, and what they can withdraw (?before&limit)",
    responses={200: "the page", 401: "no or bad token", 422: "bad limit", 429: "rate limited"},
    response_schema=PAGE_SCHEMA,
)
async def my_payouts(request: web.Request) -> web.Response:
    identity = await _limited(request)
    service = _service(request)
    limit = query_limit(request)
    page = await service.list(user_id=identity.user_id, before=query_cursor(request), limit=limit)
    return web.json_response({**_page(page, limit), **await service.balance(identity.user_id)})


@routes.post(
    "/api/v1/payouts",
    summary="Request a payout from the caller's earnings (at least the minimum, past the hold time)",
    request={"application/json": REQUEST_SCHEMA},
    responses={201: "requested: the earnings are held", 200: "a replayed idempotencyKey",
               400: "not a JSON object", 401: "no or bad token",
               409: "not enough withdrawable earnings, or the key was used for another amount",
               422: "bad fields or below the minimum", 429: "rate limited"},
    response_schema=PAYOUT_SCHEMA,
)
async def request_payout(request: web.Request) -> web.Response:
    identity = await _limited(request)
    payout = await _service(request).request(identity.user_id, await json_object(request))
    return _answer(payout, 201)


@routes.get(
    "/api/v1/admin/payouts",
    summary="Payouts of every creator, newest first (admin; ?status=requested|approved|rejected|paid)",
    responses={200: "the page", 401: "no or bad token", 403: "not an admin", 422: "bad filter",
               429: "rate limited"},
    response_schema=PAGE_SCHEMA,
)
async def all_payouts(request: web.Request) -> web.Response:
    await admin_request(request)
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise ApiError(422, "bad_status", f"status is one of {', '.join(STATUSES)}")
    limit = query_limit(request)
    page = await _service(request).list(status=status, before=query_cursor(request), limit=limit)
    return web.json_response(_page(page, limit))


async def _decide(request: web.Request, approve: bool) -> web.Response:
    airwave, admin_identity = await admin_request(request)
    admin = admin_identity.user_id
    body = await json_object(request) if request.can_read_body else {}
    service: Payouts = need(airwave.services.payouts)
    payout_id = request.match_info["payout_id"][:64]
    if approve:
        payout = await service.approve(payout_id, admin, body.get("note"))
    else:
        payout = await service.reject(payout_id, admin, body.get("note"))
    return _answer(payout)


@routes.post(
    "/api/v1/admin/payouts/{payout_id}/approve",
    summary="Approve a requested payout (admin): the app's backend is told by the payout.approved webhook",
    request={"application/json": DECISION_SCHEMA},
    responses={200: "approved", 401: "no or bad token", 403: "not an admin", 404: "no such payout",
               409: "not requested", 429: "rate limited"},
    response_schema=PAYOUT_SCHEMA,
)
async def approve_payout(request: web.Request) -> web.Response:
    return await _decide(request, approve=True)


@routes.post(
    "/api/v1/admin/payouts/{payout_id}/reject",
    summary="Reject a requested or approved payout (admin): the earnings go back to the creator",
    request={"application/json": DECISION_SCHEMA},
    responses={200: "rejected", 401: "no or bad token", 403: "not an admin", 404: "no such payout",
               409: "already paid or rejected", 429: "rate limited"},
    response_schema=PAYOUT_SCHEMA,
)
async def reject_payout(request: web.Request) -> web.Response:
    return await _decide(request, approve=False)


@routes.post(
    "/api/v1/payouts/{payout_id}/paid",
    summary="The app's backend confirms it paid an approved payout (admin token); repeats are no-ops",
    request={"application/json": PAID_SCHEMA},
    responses={200: "paid (a repeat: header Idempotent-Replayed)", 401: "no or bad token",
               403: "not an admin", 404: "no such payout", 409: "not approved", 429: "rate limited"},
    response_schema=PAYOUT_SCHEMA,
)
async def payout_paid(request: web.Request) -> web.Response:
    airwave, _ = await admin_request(request)
    body = await json_object(request) if request.can_read_body else {}
    service: Payouts = need(airwave.services.payouts)
    payout = await service.mark_paid(request.match_info["payout_id"][:64], body.get("reference"))
    return _answer(payout)


def install(airwave: Airwave, app: web.Application) -> None:
    settings = airwave.settings
    airwave.services.payouts = Payouts(
        airwave.db, need(airwave.services.wallets), airwave.services.outbox,
        minimum=settings.payout_minimum, hold_seconds=settings.payout_hold_seconds,
    )
    airwave.services.payout_limiter = RouteLimiter(airwave.redis, settings.redis_prefix, rate=20.0, burst=60.0)
