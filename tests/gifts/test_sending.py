"""The split and its rounding, who may receive, and refusals that change nothing."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from config import Settings
from tests.conftest import RunningApp, start_app
from tests.gifts.gift_clients import (
    CATALOG_JSON,
    WEBHOOK_SECRET,
    assert_ledger_consistent,
    fund,
    get_json,
    gift,
    make_call,
    make_live_room,
    send_http,
    set_room,
    wallet,
)


async def test_split_rounds_the_creator_down_for_odd_prices(running: RunningApp) -> None:
    await make_live_room(running, "stage", owner="star", stream_id="s1")
    await fund(running, "fan", 1000)
    async with aiohttp.ClientSession() as http:
        cases = [  # (gift, quantity, paid, creator, platform) with share 0.6
            ("lucky", 3, 21, 12, 9),  # 12.6 -> 12
            ("crown", 1, 33, 19, 14),  # 19.8 -> 19
            ("rose", 1, 1, 0, 1),  # 0.6 -> 0: all to the platform
            ("hundred", 999, 99900, None, None),  # too dear: nothing moves
            ("lucky", 5, 35, 21, 14),  # exact
        ]
        spent = earned = 0
        for gift_id, quantity, paid, creator, platform in cases:
            status, body = await send_http(http, running, "fan", gift(gift_id, "star", quantity, roomId="stage"))
            if creator is None:
                assert (status, body["code"]) == (409, "insufficient_funds")
                continue
            assert status == 200, body
            spent, earned = spent + paid, earned + creator
            assert (body["coins"], body["creatorCoins"], body["platformCoins"]) == (paid, creator, platform)
            assert body["balance"] == 1000 - spent
    assert await wallet(running, "fan") == {"coins": 1000 - spent, "earnings": 0}
    assert await wallet(running, "star") == {"coins": 0, "earnings": earned}
    audit = await assert_ledger_consistent(running)
    assert audit.balances["platform:earnings"] == spent - earned

    # The sender's ledger, newest first, paged with before=.
    status, page = await get_json(running, "/api/v1/wallet/transactions?limit=2", "fan")
    assert status == 200
    assert [t["entries"][0]["amount"] for t in page["transactions"]] == [-35, -1]
    assert page["transactions"][0]["details"]["giftId"] == "lucky"
    status, rest = await get_json(running, f"/api/v1/wallet/transactions?before={page['nextBefore']}", "fan")
    assert [(t["kind"], t["entries"][0]["amount"]) for t in rest["transactions"]] == [
        ("gift", -33), ("gift", -21), ("topup", 1000)
    ]
    assert rest["nextBefore"] is None
    status, mine = await get_json(running, "/api/v1/wallet/transactions", "star")
    assert [t["entries"] for t in mine["transactions"]][0] == [
        {"account": "earnings", "amount": 21, "balanceAfter": earned}
    ]


async def test_shares_are_exact_fractions_not_floats(make_settings: Callable[..., Settings]) -> None:
    # 100 * 0.29 is 28.999999999999996 in binary floating point; the creator is owed 29.
    app = await start_app(
        make_settings(webhook_secret=WEBHOOK_SECRET, gifts=CATALOG_JSON, gift_creator_share=0.29)
    )
    try:
        await make_live_room(app, "stage", owner="star", stream_id="s1")
        await fund(app, "fan", 100)
        async with aiohttp.ClientSession() as http:
            status, body = await send_http(http, app, "fan", gift("hundred", "star", roomId="stage"))
        assert status == 200, body
        assert (body["creatorCoins"], body["platformCoins"]) == (29, 71)
        await assert_ledger_consistent(app)
    finally:
        await app.server.close()


async def test_only_the_broadcaster_or_the_other_call_party_receives(running: RunningApp) -> None:
    await make_live_room(running, "stage", owner="star", stream_id="s1")
    await make_live_room(running, "quiet", owner="star", stream_id="s0")
    await set_room(running, "quiet", status="idle")
    await make_call(running, "call-1", "fan", "date", status="active")
    await make_call(running, "call-ringing", "fan", "date", status="ringing")
    await make_call(running, "call-other", "date", "someone", status="active")
    await fund(running, "fan", 100)
    await fund(running, "date", 100)
    refusals = [
        ("fan", gift("rose", "viewer2", roomId="stage"), 403, "not_receiver"),
        ("fan", gift("rose", "star", roomId="quiet"), 422, "room_not_live"),
        ("fan", gift("rose", "star", roomId="nowhere"), 404, "room_not_found"),
        ("star", gift("rose", "star", roomId="stage"), 422, "cannot_gift_self"),
        ("fan", gift("rose", "someone", callId="call-1"), 403, "not_receiver"),
        ("fan", gift("rose", "date", callId="call-ringing"), 422, "call_not_active"),
        ("fan", gift("rose", "date", callId="call-other"), 403, "not_call_party"),
        ("fan", gift("rose", "date", callId="no-call"), 404, "call_not_found"),
        ("fan", gift("nope", "star", roomId="stage"), 404, "gift_not_found"),
        ("fan", gift("rose", "star", 0, roomId="stage"), 422, "bad_quantity"),
        ("fan", gift("rose", "star", 1000, roomId="stage"), 422, "bad_quantity"),
        ("fan", {**gift("rose", "star", roomId="stage"), "callId": "call-1"}, 422, "bad_target"),
        ("fan", {**gift("rose", "star", roomId="stage"), "idempotencyKey": ""}, 422, "missing_idempotency_key"),
        ("fan", {**gift("rose", "star", roomId="stage"), "quantity": "2"}, 422, "bad_quantity"),
    ]
    async with aiohttp.ClientSession() as http:
        for sender, body, status, code in refusals:
            got_status, got = await send_http(http, running, sender, body)
            assert (got_status, got["code"]) == (status, code), (body, got)
        before = await assert_ledger_consistent(running)
        assert await wallet(running, "fan") == {"coins": 100, "earnings": 0}

        status, body = await send_http(http, running, "fan", gift("lucky", "date", 2, callId="call-1"))
        assert status == 200, body
        assert body["callId"] == "call-1" and body["creatorCoins"] == 8
        status, body = await send_http(http, running, "date", gift("rose", "fan", callId="call-1"))
        assert status == 200, body
        # A broadcaster's room that ended refuses, even to a valid receiver.
        await set_room(running, "stage", status="ended")
        status, body = await send_http(http, running, "fan", gift("rose", "star", roomId="stage"))
        assert (status, body["code"]) == (422, "room_not_live")
    assert await wallet(running, "date") == {"coins": 99, "earnings": 8}
    assert await wallet(running, "fan") == {"coins": 86, "earnings": 0}
    after = await assert_ledger_consistent(running)
    assert after.balances["platform:earnings"] - before.balances.get("platform:earnings", 0) == 7
