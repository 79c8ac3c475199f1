"""Earnings are never withdrawn twice: 50 concurrent payout requests against one
creator's earnings (real row contention on PostgreSQL; serialised on SQLite)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import aiohttp
import pytest

from config import Settings
from tests.conftest import RunningApp
from tests.gifts.gift_clients import CATALOG_JSON, WEBHOOK_SECRET, assert_ledger_consistent, wallet
from tests.gifts.test_money_out import earn, reconciliation


@pytest.fixture
async def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(webhook_secret=WEBHOOK_SECRET, gifts=CATALOG_JSON, payout_minimum=100,
                         payout_hold_seconds=0)


async def test_fifty_concurrent_withdrawals_from_earnings_for_six(running: RunningApp) -> None:
    await earn(running, "creator", 1000)  # 600 earnings: six payouts of 100
    token = running.token("creator")

    async def withdraw(http: aiohttp.ClientSession) -> tuple[int, dict[str, object]]:
        async with http.post(
            running.url + "/api/v1/payouts",
            json={"coins": 100, "idempotencyKey": uuid.uuid4().hex},
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            return r.status, await r.json()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.wait_for(asyncio.gather(*(withdraw(http) for _ in range(50))), timeout=60)
    ok = [body for status, body in results if status == 201]
    refused = [body for status, body in results if status != 201]
    assert len(ok) == 6, results
    assert {b["code"] for b in refused} == {"insufficient_earnings"}
    assert len({b["id"] for b in ok}) == 6
    assert await wallet(running, "creator") == {"coins": 0, "earnings": 0}
    audit = await assert_ledger_consistent(running)
    assert audit.balances["platform:payouts_pending"] == 600
    assert (await reconciliation(running))["ok"] is True
