"""Coins never go missing and are never moved twice, under concurrent HTTP and
Socket.IO sends (real row contention on PostgreSQL; serialised on SQLite)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import socketio
from prometheus_client.parser import text_string_to_metric_families

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.gifts.gift_clients import (
    assert_ledger_consistent,
    connect,
    fund,
    join_room_audience,
    make_live_room,
    send_http,
    wallet,
)

PRICE = 7  # "lucky": creator floor(7 * 0.6) = 4, platform 3
CREATOR_PER_GIFT = 4
PLATFORM_PER_GIFT = 3


async def _send_socket(client: socketio.AsyncClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    ack = await client.call("gift:send", body, timeout=10)
    if "error" in ack:
        return 409 if ack["error"]["code"] == "insufficient_funds" else 400, ack["error"]
    return 200, ack


async def _metric(running: RunningApp, name: str, **labels: str) -> float:
    """A sample from /metrics, summed over the labels not named (the node label)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/metrics") as r:
            text = await r.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_fifty_concurrent_sends_from_a_wallet_for_thirty(running: RunningApp) -> None:
    sent_before = await _metric(running, "airwave_gifts_sent_total")
    refused_before = await _metric(running, "airwave_gift_refusals_total", reason="insufficient_funds")
    await make_live_room(running, "stage", owner="star", stream_id="s1")
    await fund(running, "fan", 30 * PRICE)
    before = await assert_ledger_consistent(running)
    platform_before = before.balances.get("platform:earnings", 0)
    sockets = [await connect(running, "fan") for _ in range(5)]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            def body() -> dict[str, Any]:
                return {
                    "giftId": "lucky", "to": "star", "roomId": "stage",
                    "quantity": 1, "idempotencyKey": uuid.uuid4().hex,
                }

            sends = [send_http(http, running, "fan", body()) for _ in range(45)]
            sends += [_send_socket(client, body()) for client in sockets]
            results = await asyncio.wait_for(asyncio.gather(*sends), timeout=30)
    finally:
        for client in sockets:
            await client.disconnect()

    ok = [b for status, b in results if status == 200]
    refused = [b for status, b in results if status != 200]
    assert len(ok) == 30
    assert len(refused) == 20
    assert {b["code"] for b in refused} == {"insufficient_funds"}
    assert len({b["transferId"] for b in ok}) == 30
    assert sorted(b["balance"] for b in ok) == [PRICE * i for i in range(30)]

    assert await wallet(running, "fan") == {"coins": 0, "earnings": 0}
    assert await wallet(running, "star") == {"coins": 0, "earnings": 30 * CREATOR_PER_GIFT}
    audit = await assert_ledger_consistent(running)
    platform_gain = audit.balances["platform:earnings"] - platform_before
    assert platform_gain == 30 * PLATFORM_PER_GIFT
    # Creator plus platform received exactly what the sender lost.
    assert audit.balances["user:star:earnings"] + platform_gain == 30 * PRICE
    db = running.app[AIRWAVE].db
    assert await db.fetchval("SELECT COUNT(*) FROM gifts_sent") == 30
    assert await db.fetchval("SELECT COUNT(*) FROM ledger_transfers WHERE kind = 'gift'") == 30
    assert await _metric(running, "airwave_gifts_sent_total") - sent_before == 30
    refused = await _metric(running, "airwave_gift_refusals_total", reason="insufficient_funds")
    assert refused - refused_before == 20


async def test_twenty_concurrent_retries_of_one_key_move_coins_once(running: RunningApp) -> None:
    await make_live_room(running, "stage", owner="star", stream_id="s1")
    await fund(running, "fan", 100)
    watcher = await connect(running, "viewer")
    await join_room_audience(running, watcher, "stage")
    received: list[dict[str, Any]] = []
    watcher.on("gift:received", lambda data: received.append(data))
    sockets = [await connect(running, "fan") for _ in range(4)]
    body = {"giftId": "crown", "to": "star", "roomId": "stage", "quantity": 2, "idempotencyKey": "tap-1"}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            sends = [send_http(http, running, "fan", body) for _ in range(16)]
            sends += [_send_socket(client, body) for client in sockets]
            results = await asyncio.wait_for(asyncio.gather(*sends), timeout=30)
            # Another gift under the same key is not the same request: refused, nothing moves.
            status, other = await send_http(http, running, "fan", {**body, "quantity": 1})
        await asyncio.sleep(0.5)  # any second gift:received would have arrived by now
    finally:
        for client in [*sockets, watcher]:
            await client.disconnect()

    assert {status for status, _ in results} == {200}
    first = results[0][1]
    assert all(b == first for _, b in results), "every retry returns the first result"
    assert first["coins"] == 66 and first["creatorCoins"] == 39 and first["platformCoins"] == 27
    assert first["balance"] == 34
    assert (status, other["code"]) == (409, "idempotency_key_reused")
    assert await wallet(running, "fan") == {"coins": 34, "earnings": 0}
    assert (await wallet(running, "star"))["earnings"] == 39
    assert len(received) == 1 and received[0]["transferId"] == first["transferId"]
    db = running.app[AIRWAVE].db
    assert await db.fetchval("SELECT COUNT(*) FROM ledger_transfers WHERE kind = 'gift'") == 1
    await assert_ledger_consistent(running)
