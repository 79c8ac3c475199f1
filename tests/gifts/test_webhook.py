"""POST /api/v1/webhooks/topup: HMAC over "<timestamp>.<raw body>", a 5-minute window,
and each eventId applied once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from config import Settings
from tests.conftest import RunningApp, start_app
from tests.gifts.gift_clients import assert_ledger_consistent, post_topup, wallet


async def test_good_signature_credits_once_and_a_replay_credits_nothing(running: RunningApp) -> None:
    event = {"eventId": "pay_001", "userId": "newcomer", "coins": 250}
    status, first, headers = await post_topup(running.url, event)
    assert status == 200, first
    assert "Idempotent-Replayed" not in headers
    assert (first["userId"], first["coins"], first["balance"]) == ("newcomer", 250, 250)
    # The user never connected: the webhook made the wallet.
    assert await wallet(running, "newcomer") == {"coins": 250, "earnings": 0}

    status, again, headers = await post_topup(running.url, event)  # a fresh signature, same event
    assert status == 200
    assert again == first
    assert headers.get("Idempotent-Replayed") == "true"
    assert await wallet(running, "newcomer") == {"coins": 250, "earnings": 0}

    # The same eventId for another amount is a backend bug, not a replay: refused.
    status, body, _ = await post_topup(running.url, {**event, "coins": 999})
    assert (status, body["code"]) == (409, "event_id_reused")

    status, second, _ = await post_topup(running.url, {**event, "eventId": "pay_002", "coins": 5})
    assert status == 200 and second["balance"] == 255
    assert await wallet(running, "newcomer") == {"coins": 255, "earnings": 0}
    audit = await assert_ledger_consistent(running)
    assert audit.balances["external:topup"] == -255


async def test_concurrent_deliveries_of_one_event_credit_once(running: RunningApp) -> None:
    event = {"eventId": "pay_race", "userId": "racer", "coins": 40}
    results = await asyncio.wait_for(
        asyncio.gather(*(post_topup(running.url, event) for _ in range(12))), timeout=20
    )
    assert {status for status, _, _ in results} == {200}
    assert len({body["transferId"] for _, body, _ in results}) == 1
    assert await wallet(running, "racer") == {"coins": 40, "earnings": 0}
    await assert_ledger_consistent(running)


async def test_bad_missing_and_stale_signatures_are_401_and_credit_nothing(running: RunningApp) -> None:
    event = {"eventId": "pay_bad", "userId": "mallory", "coins": 1000}
    raw = json.dumps(event).encode()
    cases = {
        "wrong secret": dict(secret="not-the-secret"),
        "unsigned": dict(sign=False),
        "five minutes and a bit old": dict(timestamp=time.time() - 301),
        "from the future": dict(timestamp=time.time() + 400),
        "body changed after signing": dict(signed_body=raw.replace(b"1000", b"1")),
    }
    for name, options in cases.items():
        status, body, _ = await post_topup(running.url, raw, **options)  # type: ignore[arg-type]
        assert status == 401, name
        assert body["code"] in ("bad_signature", "missing_signature", "stale_timestamp"), (name, body)
    # Within the window is fine: four minutes old.
    status, body, _ = await post_topup(running.url, {**event, "eventId": "pay_ok"}, timestamp=time.time() - 240)
    assert status == 200, body
    assert await wallet(running, "mallory") == {"coins": 1000, "earnings": 0}
    # The refused eventId was never recorded: a correct delivery of it still applies.
    status, body, _ = await post_topup(running.url, raw)
    assert status == 200 and body["balance"] == 2000


async def test_signed_but_malformed_events_are_refused(running: RunningApp) -> None:
    for bad in (
        {"eventId": "x", "userId": "u", "coins": 0},
        {"eventId": "x", "userId": "u", "coins": 1.5},
        {"eventId": "x", "userId": "u", "coins": True},
        {"eventId": "", "userId": "u", "coins": 1},
        {"userId": "u", "coins": 1},
        [1, 2],
    ):
        status, body, _ = await post_topup(running.url, json.dumps(bad).encode())
        assert (status, body["code"]) == (422, "bad_event"), bad
    await assert_ledger_consistent(running)
    assert await wallet(running, "u") == {"coins": 0, "earnings": 0}


async def test_without_a_webhook_secret_every_topup_is_refused(make_settings: Callable[..., Settings]) -> None:
    app = await start_app(make_settings(webhook_secret=""))
    try:
        status, body, _ = await post_topup(app.url, {"eventId": "e", "userId": "u", "coins": 5}, secret="")
        assert (status, body["code"]) == (503, "webhook_not_configured")
        assert "AIRWAVE_WEBHOOK_SECRET" in body["message"]
        assert await wallet(app, "u") == {"coins": 0, "earnings": 0}
    finally:
        await app.server.close()
