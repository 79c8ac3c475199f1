"""What the gift tests share: a signed top-up client, REST and Socket.IO senders,
rooms and calls put in place through the app's database, and an independent
audit of the ledger in plain SQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import socketio

from api.components import AIRWAVE
from signaling.server import room_audience
from tests.conftest import RunningApp

WEBHOOK_SECRET = "whsec-test-" + "k" * 24
CATALOG = [
    {"id": "rose", "name": "Rose", "coins": 1},
    {"id": "lucky", "name": "Lucky Seven", "coins": 7, "imageUrl": "https://cdn.example/7.png"},
    {"id": "crown", "name": "Crown", "coins": 33},
    {"id": "hundred", "name": "Hundred", "coins": 100},
]
CATALOG_JSON = json.dumps(CATALOG)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """Written here from the spec, not imported from the server."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def post_topup(
    url: str,
    body: dict[str, Any] | bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: float | None = None,
    sign: bool = True,
    signed_body: bytes | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ts = str(int(time.time() if timestamp is None else timestamp))
    headers = {"Content-Type": "application/json"}
    if sign:
        headers["X-Airwave-Timestamp"] = ts
        headers["X-Airwave-Signature"] = signature(secret, ts, raw if signed_body is None else signed_body)
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/v1/webhooks/topup", data=raw, headers=headers) as r:
            return r.status, await r.json(), dict(r.headers)


async def fund(running: RunningApp, user: str, coins: int) -> None:
    status, body, _ = await post_topup(
        running.url, {"eventId": f"pay-{uuid.uuid4().hex}", "userId": user, "coins": coins}
    )
    assert status == 200, body


async def send_http(
    http: aiohttp.ClientSession, running: RunningApp, user: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        running.url + "/api/v1/gifts/send",
        json=body,
        headers={"Authorization": f"Bearer {running.token(user)}"},
    ) as r:
        return r.status, await r.json()


async def get_json(running: RunningApp, path: str, user: str, **token: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            running.url + path, headers={"Authorization": f"Bearer {running.token(user, **token)}"}
        ) as r:
            return r.status, await r.json()


async def wallet(running: RunningApp, user: str) -> dict[str, int]:
    status, body = await get_json(running, "/api/v1/wallet", user)
    assert status == 200, body
    return body


async def connect(running: RunningApp, user: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        running.url, auth={"token": running.token(user)}, transports=["websocket"], wait_timeout=5
    )
    return client


async def join_room_audience(running: RunningApp, client: socketio.AsyncClient, room_id: str) -> None:
    """Put a socket in the room's Socket.IO audience server-side, as stream:join
    (another feature's event) does, so these tests do not depend on it."""
    sio = running.app[AIRWAVE].signaling.sio
    await sio.enter_room(client.get_sid("/"), room_audience(room_id))


async def make_live_room(running: RunningApp, room_id: str, owner: str, stream_id: str) -> None:
    """A live room without media: the rooms row is written through the app's own
    database (the gift rules read only that row)."""
    db = running.app[AIRWAVE].db
    await db.execute(
        "INSERT INTO rooms (id, type, title, public, status, owner_id, stream_id, created_at, live_at)"
        " VALUES ($1, 'live', 'test', 1, 'live', $2, $3, $4, $4)",
        room_id, owner, stream_id, time.time(),
    )


async def set_room(running: RunningApp, room_id: str, *, status: str, stream_id: str | None = None) -> None:
    db = running.app[AIRWAVE].db
    await db.execute(
        "UPDATE rooms SET status = $2, stream_id = COALESCE($3, stream_id) WHERE id = $1",
        room_id, status, stream_id,
    )


async def make_call(running: RunningApp, call_id: str, caller: str, callee: str, status: str) -> None:
    """A call record written through the app's database, as the call feature would."""
    db = running.app[AIRWAVE].db
    await db.execute(
        "INSERT INTO calls (id, caller_id, callee_id, media, status, created_at)"
        " VALUES ($1, $2, $3, 'video', $4, $5)",
        call_id, caller, callee, status, time.time(),
    )


@dataclass
class LedgerAudit:
    total: int
    unbalanced_transfers: list[str]
    wrong_balances: list[str]
    balances: dict[str, int]


async def audit_ledger(running: RunningApp) -> LedgerAudit:
    """Every transfer sums to zero and every stored balance is the sum of its entries."""
    db = running.app[AIRWAVE].db
    total = int(await db.fetchval("SELECT COALESCE(SUM(amount), 0) FROM ledger_entries"))
    unbalanced = [
        r["transfer_id"]
        for r in await db.fetch(
            "SELECT transfer_id FROM ledger_entries GROUP BY transfer_id HAVING SUM(amount) <> 0"
        )
    ]
    sums = {
        r["account"]: int(r["total"])
        for r in await db.fetch("SELECT account, SUM(amount) AS total FROM ledger_entries GROUP BY account")
    }
    stored: dict[str, int] = {}
    for r in await db.fetch("SELECT user_id, coins, earnings FROM wallets"):
        stored[f"user:{r['user_id']}:coins"] = int(r["coins"])
        stored[f"user:{r['user_id']}:earnings"] = int(r["earnings"])
    for r in await db.fetch("SELECT account, balance FROM ledger_accounts"):
        stored[r["account"]] = int(r["balance"])
    wrong = [
        f"{account}: stored {stored.get(account, 0)}, entries sum to {sums.get(account, 0)}"
        for account in set(stored) | set(sums)
        if stored.get(account, 0) != sums.get(account, 0)
    ]
    return LedgerAudit(total, unbalanced, wrong, stored)


async def assert_ledger_consistent(running: RunningApp) -> LedgerAudit:
    audit = await audit_ledger(running)
    assert audit.total == 0, f"the ledger sums to {audit.total}"
    assert audit.unbalanced_transfers == []
    assert audit.wrong_balances == []
    return audit


def gift(gift_id: str, to: str, quantity: int = 1, **target: str) -> dict[str, Any]:
    """A send request with a fresh idempotency key."""
    return {"giftId": gift_id, "to": to, "quantity": quantity, "idempotencyKey": uuid.uuid4().hex, **target}
