"""Money out: refunds and chargebacks through the signed webhook (never below
zero, the shortfall booked as a loss), creator payouts (minimum, hold time,
approve, reject, paid; never twice under concurrency), and the reconciliation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from config import Settings
from tests.conftest import RunningApp, rest, start_app
from tests.gifts.gift_clients import (
    CATALOG_JSON,
    WEBHOOK_SECRET,
    assert_ledger_consistent,
    fund,
    gift,
    make_live_room,
    send_http,
    signature,
    wallet,
)

PREVIOUS_SECRET = "whsec-previous-" + "p" * 20


@pytest.fixture
async def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        webhook_secret=WEBHOOK_SECRET, webhook_secret_previous=PREVIOUS_SECRET, gifts=CATALOG_JSON,
        gift_creator_share=0.6, payout_minimum=100, payout_hold_seconds=0,
    )


async def post_signed(
    running: RunningApp, path: str, body: dict[str, Any], secrets: tuple[str, ...] = (WEBHOOK_SECRET,)
) -> tuple[int, dict[str, Any], dict[str, str]]:
    raw = json.dumps(body).encode()
    ts = str(int(time.time()))
    header = ",".join(signature(s, ts, raw) for s in secrets)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            running.url + path, data=raw,
            headers={"Content-Type": "application/json", "X-Airwave-Timestamp": ts,
                     "X-Airwave-Signature": header},
        ) as r:
            return r.status, await r.json(), dict(r.headers)


async def earn(running: RunningApp, creator: str, coins_paid: int) -> None:
    """A fan pays ``coins_paid`` in Hundred gifts to the creator (60 % become earnings)."""
    room = f"room-{uuid.uuid4().hex[:6]}"
    await make_live_room(running, room, owner=creator, stream_id="s1")
    fan = f"fan-{uuid.uuid4().hex[:6]}"
    await fund(running, fan, coins_paid)
    async with aiohttp.ClientSession() as http:
        status, body = await send_http(
            http, running, fan, gift("hundred", creator, quantity=coins_paid // 100, roomId=room)
        )
    assert status == 200, body


async def reconciliation(running: RunningApp) -> dict[str, Any]:
    status, body = await rest(running, "GET", "/api/v1/admin/ledger/reconciliation", "ops", admin=True)
    assert status == 200, body
    return body


async def test_rotated_signatures_are_accepted_on_the_incoming_webhooks(running: RunningApp) -> None:
    event = {"eventId": "pay_rot", "userId": "rot", "coins": 5}
    for secrets in ((PREVIOUS_SECRET,), ("wrong-secret", WEBHOOK_SECRET), (WEBHOOK_SECRET, PREVIOUS_SECRET)):
        status, body, _ = await post_signed(running, "/api/v1/webhooks/topup", event, secrets)
        assert status == 200, (secrets, body)
    status, body, _ = await post_signed(running, "/api/v1/webhooks/topup", event, ("a", "b"))
    assert (status, body["code"]) == (401, "bad_signature")
    assert await wallet(running, "rot") == {"coins": 5, "earnings": 0}


async def test_a_refund_takes_coins_to_zero_and_books_the_rest_as_a_loss(running: RunningApp) -> None:
    await make_live_room(running, "stage", owner="star", stream_id="s1")
    await fund(running, "buyer", 100)
    async with aiohttp.ClientSession() as http:
        status, body = await send_http(http, running, "buyer", gift("crown", "star", quantity=2, roomId="stage"))
    assert status == 200 and body["balance"] == 34

    refund = {"eventId": "rf_1", "userId": "buyer", "coins": 100, "kind": "chargeback"}
    status, first, headers = await post_signed(running, "/api/v1/webhooks/refund", refund)
    assert status == 200, first
    assert (first["recovered"], first["loss"], first["balance"]) == (34, 66, 0)
    assert "Idempotent-Replayed" not in headers
    # The gifted coins stay with the creator.
    assert await wallet(running, "buyer") == {"coins": 0, "earnings": 0}
    assert (await wallet(running, "star"))["earnings"] == 39

    status, again, headers = await post_signed(running, "/api/v1/webhooks/refund", refund)
    assert (status, again, headers.get("Idempotent-Replayed")) == (200, first, "true")
    status, body, _ = await post_signed(running, "/api/v1/webhooks/refund", {**refund, "kind": "refund"})
    assert (status, body["code"]) == (409, "event_id_reused")
    status, body, _ = await post_signed(running, "/api/v1/webhooks/refund", {**refund, "kind": "oops"})
    assert (status, body["code"]) == (422, "bad_event")

    audit = await assert_ledger_consistent(running)
    assert audit.balances["platform:losses"] == -66
    assert audit.balances["external:topup"] == 0  # bought 100, all of it refunded
    assert (await reconciliation(running))["ok"] is True


async def test_concurrent_refunds_and_gifts_never_take_a_wallet_below_zero(running: RunningApp) -> None:
    await make_live_room(running, "stage", owner="star", stream_id="s1")
    await fund(running, "racer", 70)
    async with aiohttp.ClientSession() as http:
        sends = [send_http(http, running, "racer", gift("lucky", "star", roomId="stage")) for _ in range(10)]
        refunds = [
            post_signed(running, "/api/v1/webhooks/refund",
                        {"eventId": f"rf_{n}", "userId": "racer", "coins": 20, "kind": "refund"})
            for n in range(3)
        ]
        results = await asyncio.wait_for(asyncio.gather(*sends, *refunds), timeout=30)
    refunded = [r[1] for r in results[10:]]
    assert all(r[0] == 200 for r in results[10:])
    gifts_paid = 7 * sum(1 for status, _ in results[:10] if status == 200)
    recovered = sum(r["recovered"] for r in refunded)
    assert sum(r["loss"] for r in refunded) == 60 - recovered
    assert (await wallet(running, "racer"))["coins"] == 70 - gifts_paid - recovered >= 0
    await assert_ledger_consistent(running)
    assert (await reconciliation(running))["ok"] is True


async def test_payout_request_approve_paid_and_reject(running: RunningApp) -> None:
    await earn(running, "creator", 1000)  # 600 earnings
    status, body = await rest(running, "POST", "/api/v1/payouts", "creator",
                              json={"coins": 99, "idempotencyKey": "k0"})
    assert (status, body["code"]) == (422, "below_minimum")
    status, body = await rest(running, "POST", "/api/v1/payouts", "creator",
                              json={"coins": 601, "idempotencyKey": "k0"})
    assert (status, body["code"]) == (409, "insufficient_earnings")

    status, first = await rest(running, "POST", "/api/v1/payouts", "creator",
                               json={"coins": 400, "idempotencyKey": "k1"})
    assert (status, first["status"], first["coins"]) == (201, "requested", 400)
    status, again = await rest(running, "POST", "/api/v1/payouts", "creator",
                               json={"coins": 400, "idempotencyKey": "k1"})
    assert (status, again) == (200, first)
    assert (await wallet(running, "creator"))["earnings"] == 200

    payout = first["id"]
    status, body = await rest(running, "POST", f"/api/v1/payouts/{payout}/paid", "ops", admin=True, json={})
    assert (status, body["code"]) == (409, "payout_state")  # not approved yet
    status, body = await rest(running, "POST", f"/api/v1/admin/payouts/{payout}/approve", "ops", admin=True,
                              json={"note": "ok"})
    assert (status, body["status"], body["decidedBy"]) == (200, "approved", "ops")
    status, body = await rest(running, "POST", f"/api/v1/payouts/{payout}/paid", "ops", admin=True,
                              json={"reference": "bank-77"})
    assert (status, body["status"], body["reference"]) == (200, "paid", "bank-77")
    status, body = await rest(running, "POST", f"/api/v1/payouts/{payout}/paid", "ops", admin=True, json={})
    assert (status, body["status"]) == (200, "paid")
    status, body = await rest(running, "POST", f"/api/v1/admin/payouts/{payout}/reject", "ops", admin=True)
    assert (status, body["code"]) == (409, "payout_state")

    status, second = await rest(running, "POST", "/api/v1/payouts", "creator",
                                json={"coins": 150, "idempotencyKey": "k2"})
    assert status == 201
    status, body = await rest(running, "POST", f"/api/v1/admin/payouts/{second['id']}/reject", "ops",
                              admin=True, json={"note": "documents missing"})
    assert (status, body["status"]) == (200, "rejected")
    assert (await wallet(running, "creator"))["earnings"] == 200

    status, mine = await rest(running, "GET", "/api/v1/payouts", "creator")
    assert status == 200
    assert [(p["id"], p["status"]) for p in mine["payouts"]] == [(second["id"], "rejected"), (payout, "paid")]
    assert (mine["earnings"], mine["withdrawable"], mine["minimum"]) == (200, 200, 100)
    status, listed = await rest(running, "GET", "/api/v1/admin/payouts?status=paid", "ops", admin=True)
    assert [p["id"] for p in listed["payouts"]] == [payout]

    audit = await assert_ledger_consistent(running)
    assert audit.balances["external:payouts"] == 400
    assert audit.balances.get("platform:payouts_pending", 0) == 0
    assert (await reconciliation(running))["ok"] is True


async def test_outsiders_are_refused_on_money_routes(running: RunningApp) -> None:
    await earn(running, "creator", 500)
    status, payout = await rest(running, "POST", "/api/v1/payouts", "creator",
                                json={"coins": 100, "idempotencyKey": "k"})
    assert status == 201
    admin_only = [
        ("GET", "/api/v1/admin/payouts"),
        ("POST", f"/api/v1/admin/payouts/{payout['id']}/approve"),
        ("POST", f"/api/v1/admin/payouts/{payout['id']}/reject"),
        ("POST", f"/api/v1/payouts/{payout['id']}/paid"),
        ("GET", "/api/v1/admin/ledger/reconciliation"),
        ("GET", "/api/v1/admin/stats"),
    ]
    for method, path in admin_only:
        for user, expected, code in ((None, 401, "missing_token"), ("creator", 403, "forbidden")):
            status, body = await rest(running, method, path, user, json={})
            assert (status, body["code"]) == (expected, code), (method, path, user)
            assert set(body) == {"status", "code", "message", "requestId"}
    status, body = await rest(running, "GET", "/api/v1/payouts", None)
    assert (status, body["code"]) == (401, "missing_token")
    # Another user sees only their own payouts.
    status, body = await rest(running, "GET", "/api/v1/payouts", "stranger")
    assert status == 200 and body["payouts"] == [] and body["withdrawable"] == 0
    status, body = await rest(running, "POST", "/api/v1/payouts", "stranger",
                              json={"coins": 100, "idempotencyKey": "k"})
    assert (status, body["code"]) == (409, "insufficient_earnings")
    status, body = await rest(running, "POST", "/api/v1/payouts", "creator", json={"coins": "all"})
    assert (status, body["code"]) == (422, "bad_coins")


async def test_earnings_younger_than_the_hold_cannot_be_withdrawn(
    make_settings: Callable[..., Settings],
) -> None:
    app = await start_app(make_settings(webhook_secret=WEBHOOK_SECRET, gifts=CATALOG_JSON,
                                        payout_minimum=1, payout_hold_seconds=3600))
    try:
        await earn(app, "fresh", 500)
        status, body = await rest(app, "POST", "/api/v1/payouts", "fresh",
                                  json={"coins": 1, "idempotencyKey": "k"})
        assert (status, body["code"]) == (409, "insufficient_earnings")
        status, body = await rest(app, "GET", "/api/v1/payouts", "fresh")
        assert (body["earnings"], body["withdrawable"]) == (300, 0)
    finally:
        await app.server.close()
