"""gift:received reaches the whole room; gift:send acks like REST; the catalog and
the leaderboards."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import RunningApp
from tests.gifts.gift_clients import (
    assert_ledger_consistent,
    connect,
    fund,
    get_json,
    gift,
    join_room_audience,
    make_live_room,
    send_http,
    set_room,
    wallet,
)


async def test_gift_received_reaches_every_socket_in_the_room(running: RunningApp) -> None:
    await make_live_room(running, "stage", owner="star", stream_id="s1")
    await fund(running, "fan", 100)
    # The broadcaster, two viewers (one on two devices) and the sender are in the room;
    # an outsider is connected but not in it.
    members = {
        "star": await connect(running, "star"),
        "v1": await connect(running, "v1"),
        "v2a": await connect(running, "v2"),
        "v2b": await connect(running, "v2"),
        "fan": await connect(running, "fan"),
    }
    outsider = await connect(running, "outsider")
    inbox: dict[str, list[dict[str, Any]]] = {name: [] for name in [*members, "outsider"]}
    all_arrived = asyncio.Event()

    def deliver(name: str, data: dict[str, Any]) -> None:
        inbox[name].append(data)
        if all(len(inbox[m]) >= 2 for m in members):
            all_arrived.set()

    for name, client in [*members.items(), ("outsider", outsider)]:
        client.on("gift:received", lambda data, name=name: deliver(name, data))
    for client in members.values():
        await join_room_audience(running, client, "stage")
    try:
        async with aiohttp.ClientSession() as http:
            status, sent = await send_http(http, running, "fan", gift("lucky", "star", 2, roomId="stage"))
        assert status == 200, sent
        # The same over Socket.IO: acked with the REST result shape.
        ack = await members["fan"].call("gift:send", gift("crown", "star", roomId="stage"), timeout=5)
        assert set(ack) == set(sent) and ack["coins"] == 33 and ack["balance"] == 100 - 14 - 33
        refused = await members["fan"].call("gift:send", gift("crown", "star", 9, roomId="stage"), timeout=5)
        assert refused == {"error": {"code": "insufficient_funds", "message": refused["error"]["message"]}}
        bad = await members["fan"].call("gift:send", "not an object", timeout=5)
        assert bad["error"]["code"] == "bad_request"

        await asyncio.wait_for(all_arrived.wait(), timeout=5)
        await asyncio.sleep(0.2)  # time for a stray third event or one to the outsider
    finally:
        for client in [*members.values(), outsider]:
            await client.disconnect()
    assert inbox["outsider"] == []
    for name in members:
        first, second = inbox[name]
        assert first == {
            "from": "fan",
            "to": "star",
            "gift": {"id": "lucky", "name": "Lucky Seven", "coins": 7, "imageUrl": "https://cdn.example/7.png"},
            "quantity": 2,
            "coins": 14,
            "roomId": "stage",
            "transferId": sent["transferId"],
        }
        assert second["gift"]["id"] == "crown" and second["transferId"] == ack["transferId"]


async def test_catalog_is_seeded_and_admins_edit_it_without_breaking_history(running: RunningApp) -> None:
    status, body = await get_json(running, "/api/v1/gifts", "anyone")
    assert status == 200
    assert [g["id"] for g in body["gifts"]] == ["rose", "lucky", "crown", "hundred"]
    assert body["gifts"][1] == {"id": "lucky", "name": "Lucky Seven", "coins": 7, "imageUrl": "https://cdn.example/7.png"}

    await make_live_room(running, "stage", owner="star", stream_id="s1")
    await fund(running, "fan", 100)
    admin = {"Authorization": f"Bearer {running.token('boss', admin=True)}"}
    user = {"Authorization": f"Bearer {running.token('fan')}"}
    base = running.url + "/api/v1/gifts"
    async with aiohttp.ClientSession() as http:
        async with http.post(base, json={"id": "comet", "name": "Comet", "coins": 11}, headers=user) as r:
            assert r.status == 403
        async with http.post(base, json={"id": "comet", "name": "Comet", "coins": 11}, headers=admin) as r:
            assert r.status == 201, await r.text()
        async with http.post(base, json={"id": "comet", "name": "Again", "coins": 1}, headers=admin) as r:
            assert (r.status, (await r.json())["code"]) == (409, "gift_exists")
        async with http.post(base, json={"id": "bad", "name": "Free", "coins": 0}, headers=admin) as r:
            assert r.status == 422
        status, sent = await send_http(http, running, "fan", gift("comet", "star", roomId="stage"))
        assert status == 200 and sent["coins"] == 11
        async with http.patch(base + "/comet", json={"coins": 13, "name": "Big Comet"}, headers=admin) as r:
            assert r.status == 200 and (await r.json())["coins"] == 13
        async with http.delete(base + "/comet", headers=admin) as r:
            assert r.status == 204
        async with http.delete(base + "/ghost", headers=admin) as r:
            assert r.status == 404
        status, body = await send_http(http, running, "fan", gift("comet", "star", roomId="stage"))
        assert (status, body["code"]) == (404, "gift_not_found")
        # History is intact: the gift sent before, at its old price, is still in the ledger.
        status, page = await get_json(running, "/api/v1/wallet/transactions", "fan")
        assert page["transactions"][0]["details"]["giftId"] == "comet"
        assert page["transactions"][0]["entries"][0]["amount"] == -11
        status, body = await get_json(running, "/api/v1/gifts", "fan")
        assert "comet" not in [g["id"] for g in body["gifts"]]
        status, body = await get_json(running, "/api/v1/gifts?includeInactive=true", "boss", admin=True)
        assert {"id": "comet", "active": False}.items() <= next(g for g in body["gifts"] if g["id"] == "comet").items()
        async with http.patch(base + "/comet", json={"active": True}, headers=admin) as r:
            assert r.status == 200
        status, sent = await send_http(http, running, "fan", gift("comet", "star", roomId="stage"))
        assert status == 200 and sent["coins"] == 13
    assert await wallet(running, "fan") == {"coins": 76, "earnings": 0}
    await assert_ledger_consistent(running)


async def test_leaderboards_of_the_current_stream_and_of_a_creator(running: RunningApp) -> None:
    await make_live_room(running, "stage", owner="star", stream_id="s1")
    for fan in ("a", "b", "c"):
        await fund(running, fan, 500)
    async with aiohttp.ClientSession() as http:
        async def give(sender: str, gift_id: str, quantity: int = 1) -> None:
            status, body = await send_http(http, running, sender, gift(gift_id, "star", quantity, roomId="stage"))
            assert status == 200, body

        await give("a", "crown")  # 33
        await give("b", "lucky", 2)  # 14
        await give("a", "rose")  # a: 34
        status, board = await get_json(running, "/api/v1/rooms/stage/leaderboard", "viewer")
        assert board == {"entries": [{"userId": "a", "coins": 34}, {"userId": "b", "coins": 14}]}
        # A new stream in the same room starts a new board; the creator's board keeps all.
        await set_room(running, "stage", status="live", stream_id="s2")
        await give("c", "lucky")  # 7
        await give("b", "rose", 3)  # 3
    status, board = await get_json(running, "/api/v1/rooms/stage/leaderboard", "viewer")
    assert board == {"entries": [{"userId": "c", "coins": 7}, {"userId": "b", "coins": 3}]}
    status, board = await get_json(running, "/api/v1/users/star/leaderboard?limit=2", "viewer")
    assert board == {"entries": [{"userId": "a", "coins": 34}, {"userId": "b", "coins": 17}]}
    status, board = await get_json(running, "/api/v1/rooms/nowhere/leaderboard", "viewer")
    assert (status, board["code"]) == (404, "room_not_found")
    status, board = await get_json(running, "/api/v1/users/star/leaderboard?limit=0", "viewer")
    assert status == 422
