"""GET /api/v1/admin/stats: the deployment's figures, and the same as Prometheus gauges."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.calls.call_clients import Party
from tests.conftest import RunningApp, rest
from tests.gifts.gift_clients import fund, gift, make_call, make_live_room, send_http


async def test_figures_count_rooms_calls_sockets_and_gifts(running: RunningApp) -> None:
    await make_live_room(running, "stage", owner="star", stream_id="s1")
    await make_live_room(running, "other", owner="star2", stream_id="s2")
    await make_call(running, "c1", "a", "b", "ringing")
    await make_call(running, "c2", "c", "d", "active")
    await make_call(running, "c3", "e", "f", "active")
    await fund(running, "fan", 100)
    async with aiohttp.ClientSession() as http:
        for gift_id in ("lucky", "crown"):
            status, body = await send_http(http, running, "fan", gift(gift_id, "star", roomId="stage"))
            assert status == 200, body
    watcher = await Party(running, "watcher").connect()
    try:
        status, stats = await rest(running, "GET", "/api/v1/admin/stats", "ops", admin=True)
    finally:
        await watcher.close()
    assert status == 200, stats
    assert stats["rooms"] == {"live": 2, "viewers": 0}
    assert stats["calls"] == {"active": 2, "ringing": 1}
    assert stats["sockets"] == 1 and stats["nodes"] == 1
    assert stats["gifts"]["lastHour"] == {"count": 2, "coins": 40}
    assert stats["gifts"]["lastDay"] == {"count": 2, "coins": 40}
    assert stats["webhooks"] == {"queued": 0, "failed": 0, "oldestAgeSeconds": 0.0}

    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/metrics") as r:
            text = await r.text()
    samples = {
        (s.name, s.labels.get("status", s.labels.get("window", ""))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    assert samples[("airwave_live_rooms", "")] == 2
    assert samples[("airwave_calls_now", "ringing")] == 1
    assert samples[("airwave_gift_coins_window", "lastHour")] == 40
    assert ("airwave_webhooks_queued", "") in samples
