"""POST /api/v1/webhooks/topup and /refund: coins bought in the app, and refunds or
chargebacks of them, signed by its payment backend.

Headers ``X-Airwave-Timestamp: <unix seconds>`` and
``X-Airwave-Signature: sha256=<hex HMAC-SHA256(webhook_secret, "<timestamp>.<raw body>")>``;
while the secret rotates, ``sha256=<a>,sha256=<b>`` (any one matching
``webhook_secret`` or ``webhook_secret_previous`` is enough).
The timestamp must be within five minutes of our clock; the signature is
compared in constant time over the raw bytes received. Each ``eventId`` is
applied once: a replay answers 200 with the first result and credits nothing.
See docs/webhooks.md.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from api.bodies import parse_json
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError, json_response
from api.routing import ApiRoutes
from gifts.payouts import REFUND_KINDS, MoneyRefused, Refunds
from gifts.wallets import TopupConflict, WalletLedger
from webhooks.signing import signature_matches

routes = ApiRoutes("webhooks")

# What install() builds and what it uses of earlier features (api.components.Services).
PROVIDES: tuple[str, ...] = ("refunds",)
NEEDS: tuple[str, ...] = ("wallets",)

TIMESTAMP_HEADER = "X-Airwave-Timestamp"
SIGNATURE_HEADER = "X-Airwave-Signature"
MAX_SKEW_SECONDS = 300
MAX_BODY_BYTES = 16 * 1024
MAX_TOPUP_COINS = 1_000_000_000

WEBHOOK_REFUSALS = Counter(
    "airwave_webhook_refusals", "Top-up webhooks refused, by reason", ["reason"]
)
TOPUP_COINS = Counter("airwave_topup_coins", "Coins credited by top-up webhooks")
REFUND_COINS = Counter(
    "airwave_refund_coins", "Coins taken back by refund and chargeback webhooks, by outcome", ["booked"]
)


class WebhookRejected(ApiError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        WEBHOOK_REFUSALS.labels(code).inc()


def verify_signature(
    secrets: tuple[str, ...], timestamp: str, signature: str, body: bytes, now: float
) -> None:
    """Raise WebhookRejected (401) unless the request is fresh and signed with one of ``secrets``."""
    if not timestamp or not signature:
        raise WebhookRejected(
            401, "missing_signature", f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required"
        )
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise WebhookRejected(401, "bad_timestamp", f"{TIMESTAMP_HEADER} must be unix seconds")
    if abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
        raise WebhookRejected(
            401, "stale_timestamp",
            f"{TIMESTAMP_HEADER} is more than {MAX_SKEW_SECONDS} s from the server's clock",
        )
    if not signature_matches(secrets, timestamp, signature, body):
        raise WebhookRejected(
            401, "bad_signature",
            f"{SIGNATURE_HEADER} is not sha256=HMAC-SHA256(secret, \"<timestamp>.<raw body>\")",
        )


async def signed_body(request: web.Request) -> bytes:
    """The raw body, once its size, freshness and signature are checked."""
    settings = request.app[AIRWAVE].settings
    if not settings.webhook_secret:
        raise WebhookRejected(
            503, "webhook_not_configured",
            "AIRWAVE_WEBHOOK_SECRET is not set, so no webhook can be verified; nothing was applied",
        )
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise WebhookRejected(413, "payload_too_large", f"the body is limited to {MAX_BODY_BYTES} bytes")
    body = await request.read()
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRejected(413, "payload_too_large", f"the body is limited to {MAX_BODY_BYTES} bytes")
    verify_signature(
        (settings.webhook_secret, settings.webhook_secret_previous),
        request.headers.get(TIMESTAMP_HEADER, "").strip(),
        request.headers.get(SIGNATURE_HEADER, ""),
        body,
        time.time(),
    )
    return body


def _parse_event(body: bytes) -> tuple[str, str, int]:
    try:
        data: Any = parse_json(body)
    except ValueError:
        raise WebhookRejected(400, "bad_json", "the body must be JSON") from None
    if not isinstance(data, dict):
        raise WebhookRejected(422, "bad_event", "the body must be an object {eventId, userId, coins}")
    event_id, user_id, coins = data.get("eventId"), data.get("userId"), data.get("coins")
    if not isinstance(event_id, str) or not (1 <= len(event_id) <= 200):
        raise WebhookRejected(422, "bad_event", "eventId must be a string of 1-200 characters")
    if not isinstance(user_id, str) or not (1 <= len(user_id) <= 128):
        raise WebhookRejected(422, "bad_event", "userId must be a string of 1-128 characters")
    if isinstance(coins, bool) or not isinstance(coins, int) or not (1 <= coins <= MAX_TOPUP_COINS):
        raise WebhookRejected(422, "bad_event", f"coins must be an integer from 1 to {MAX_TOPUP_COINS}")
    return event_id, user_id, coins


TOPUP_EVENT_SCHEMA = {
    "type": "object",
    "required": ["eventId", "userId", "coins"],
    "properties": {
        "eventId": {"type": "string", "description": "unique per payment; applied once"},
        "userId": {"type": "string"},
        "coins": {"type": "integer", "minimum": 1},
    },
}
TOPUP_RESULT_SCHEMA = {
    "type": "object",
    "properties": {
        "transferId": {"type": "string"},
        "eventId": {"type": "string"},
        "userId": {"type": "string"},
        "coins": {"type": "integer"},
        "balance": {"type": "integer", "description": "the user's coins right after this top-up"},
        "createdAt": {"type": "number"},
    },
}


@routes.post(
    "/api/v1/webhooks/topup",
    summary="Credit coins bought in the app (HMAC-signed by the payment backend; see docs/webhooks.md)",
    auth=False,
    request={"application/json": TOPUP_EVENT_SCHEMA},
    responses={
        200: "credited, or a replayed eventId (the first result; header Idempotent-Replayed)",
        400: "not JSON",
        401: "missing or bad signature, or a timestamp more than 5 minutes off",
        409: "the eventId was applied before to another user or amount",
        413: "body too large",
        422: "bad fields",
        503: "AIRWAVE_WEBHOOK_SECRET is not set: every top-up is refused",
    },
    response_schema=TOPUP_RESULT_SCHEMA,
)
async def topup_webhook(request: web.Request) -> web.Response:
    airwave = request.app[AIRWAVE]
    body = await signed_body(request)
    event_id, user_id, coins = _parse_event(body)
    ledger: WalletLedger = need(airwave.services.wallets)
    try:
        topup = await ledger.topup(event_id, user_id, coins)
    except TopupConflict as exc:
        raise WebhookRejected(409, exc.code, str(exc)) from None
    if topup.replayed:
        return json_response(topup.as_json(), headers={"Idempotent-Replayed": "true"})
    TOPUP_COINS.inc(coins)
    return json_response(topup.as_json())


REFUND_EVENT_SCHEMA = {
    "type": "object",
    "required": ["eventId", "userId", "coins", "kind"],
    "properties": {
        "eventId": {"type": "string", "description": "unique per refund or chargeback; applied once"},
        "userId": {"type": "string"},
        "coins": {"type": "integer", "minimum": 1, "description": "the coins the payment bought"},
        "kind": {"type": "string", "enum": list(REFUND_KINDS)},
    },
}
REFUND_RESULT_SCHEMA = {
    "type": "object",
    "properties": {
        "transferId": {"type": "string"},
        "kind": {"type": "string", "enum": list(REFUND_KINDS)},
        "eventId": {"type": "string"},
        "userId": {"type": "string"},
        "coins": {"type": "integer"},
        "recovered": {"type": "integer", "description": "taken from the user's coins"},
        "loss": {"type": "integer", "description": "booked to platform:losses (already spent)"},
        "balance": {"type": "integer", "description": "the user's coins right after"},
        "createdAt": {"type": "number"},
    },
}


@routes.post(
    "/api/v1/webhooks/refund",
    summary="Take back coins of a refunded or charged-back payment (HMAC-signed; see docs/gifts.md)",
    auth=False,
    request={"application/json": REFUND_EVENT_SCHEMA},
    responses={
        200: "applied, or a replayed eventId (the first result; header Idempotent-Replayed)",
        400: "not JSON",
        401: "missing or bad signature, or a timestamp more than 5 minutes off",
        409: "the eventId was applied before as another refund",
        413: "body too large",
        422: "bad fields",
        503: "AIRWAVE_WEBHOOK_SECRET is not set: every refund is refused",
    },
    response_schema=REFUND_RESULT_SCHEMA,
)
async def refund_webhook(request: web.Request) -> web.Response:
    airwave = request.app[AIRWAVE]
    body = await signed_body(request)
    event_id, user_id, coins = _parse_event(body)
    kind = parse_json(body).get("kind")
    if kind not in REFUND_KINDS:
        raise WebhookRejected(422, "bad_event", f"kind must be one of {', '.join(REFUND_KINDS)}")
    refunds: Refunds = need(airwave.services.refunds)
    try:
        refund = await refunds.take_back(kind, event_id, user_id, coins)
    except MoneyRefused as exc:
        status = 409 if exc.code == "event_id_reused" else 503
        raise WebhookRejected(status, exc.code, exc.message) from None
    if refund.replayed:
        return json_response(refund.as_json(), headers={"Idempotent-Replayed": "true"})
    REFUND_COINS.labels("recovered").inc(refund.recovered)
    REFUND_COINS.labels("loss").inc(refund.loss)
    return json_response(refund.as_json())


def install(airwave: Airwave, app: web.Application) -> None:
    airwave.services.refunds = Refunds(airwave.db, need(airwave.services.wallets))
