"""bench.gifts: gifts per second with many concurrent senders, then the books.

One receiver goes live (a WHIP publisher of Opus only, so the room is
``live`` and the receiver is its broadcaster); ``--senders`` users send the
cheapest active gift (``POST /api/v1/gifts/send``, a new idempotency key each)
as fast as the server answers, ``--concurrency`` requests in flight each, for
``--duration`` seconds. Measured: gifts per second, latency p50/p99,
refusals by code. Then the books are checked through the API: no wallet
negative; what the senders lost equals the coins of the gifts acked; what
the receiver earned equals their creator shares; each sender's balance is
where its own acked gifts left it. With ``--database-url`` (PostgreSQL or
SQLite file of the server) the ledger itself is checked too: all entries sum
to zero, every transfer sums to zero, every wallet equals its entries, none
negative.

Coins: ``--webhook-secret`` tops every sender up by ``--coins`` through the
signed webhook; without it the senders spend what they have (demo users of
the development sign-in start with 100).

    python -m bench.gifts --url http://127.0.0.1:8080 --senders 50 --duration 10 \\
        --webhook-secret SECRET --database-url postgresql://... --out gifts.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import aiohttp

from .client_ice import use_host_addresses
from .media_clip import audio_clip
from .report import chart_bars, finite, format_table, percentile, run_script
from .server_probe import ServerProbe
from .user_tokens import UserToken, user_tokens
from .whip_publisher import LoopedClipTrack, WhipPublisher


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wallet(http: aiohttp.ClientSession, url: str, token: str) -> dict[str, int]:
    async with http.get(f"{url}/api/v1/wallet", headers=_auth(token)) as r:
        if r.status != 200:
            raise RuntimeError(f"GET /api/v1/wallet: HTTP {r.status}")
        return await r.json()


async def topup(http: aiohttp.ClientSession, url: str, secret: str, user_id: str, coins: int) -> None:
    body = json.dumps({"eventId": f"bench-{uuid.uuid4().hex}", "userId": user_id,
                       "coins": coins}).encode()
    timestamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Airwave-Timestamp": timestamp,
               "X-Airwave-Signature": "sha256=" + digest}
    async with http.post(f"{url}/api/v1/webhooks/topup", data=body, headers=headers) as r:
        if r.status not in (200, 201):
            raise RuntimeError(f"top-up: HTTP {r.status}: {await r.text()}")


async def cheapest_gift(http: aiohttp.ClientSession, url: str, token: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/v1/gifts", headers=_auth(token)) as r:
        gifts = (await r.json()).get("gifts", [])
    if not gifts:
        raise SystemExit("the gift catalog is empty")
    return min(gifts, key=lambda g: g["coins"])


async def create_room(http: aiohttp.ClientSession, url: str, token: str) -> str:
    """A live room owned by the receiver: only a room's owner (or a token naming
    the room) may publish into it."""
    async with http.post(f"{url}/api/v1/rooms", json={"type": "live", "title": "bench gifts"},
                         headers=_auth(token)) as r:
        if r.status != 201:
            raise RuntimeError(f"POST /api/v1/rooms: HTTP {r.status}: {await r.text()}")
        return str((await r.json())["id"])


async def wait_live(http: aiohttp.ClientSession, url: str, token: str, room: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        async with http.get(f"{url}/api/v1/rooms/{room}", headers=_auth(token)) as r:
            if r.status == 200 and (await r.json()).get("status") == "live":
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"room {room} did not go live")


async def ledger_checks(database_url: str, schema: str | None) -> dict[str, Any]:
    """The invariants of docs/gifts.md, read straight from the server's database."""
    queries = {
        "entries_sum": "SELECT COALESCE(SUM(amount), 0) FROM ledger_entries",
        "unbalanced_transfers": "SELECT COUNT(*) FROM (SELECT transfer_id FROM ledger_entries "
                                "GROUP BY transfer_id HAVING SUM(amount) <> 0) t",
        "negative_wallets": "SELECT COUNT(*) FROM wallets WHERE coins < 0 OR earnings < 0",
        "wallets_off_ledger": (
            "SELECT COUNT(*) FROM wallets w WHERE w.coins <> (SELECT COALESCE(SUM(amount), 0) "
            "FROM ledger_entries WHERE account = 'user:' || w.user_id || ':coins') OR w.earnings <> "
            "(SELECT COALESCE(SUM(amount), 0) FROM ledger_entries "
            "WHERE account = 'user:' || w.user_id || ':earnings')"),
    }
    results: dict[str, Any] = {}
    if database_url.startswith(("postgres://", "postgresql://")):
        import asyncpg

        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            if schema:
                await conn.execute(f'SET search_path TO "{schema}"')
            for name, sql in queries.items():
                results[name] = int(await conn.fetchval(sql))
        finally:
            await conn.close()
    else:
        import sqlite3

        path = database_url.removeprefix("sqlite:///").removeprefix("sqlite://")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            for name, sql in queries.items():
                results[name] = int(conn.execute(sql).fetchone()[0])
    results["ok"] = (results["entries_sum"] == 0 and results["unbalanced_transfers"] == 0
                     and results["negative_wallets"] == 0 and results["wallets_off_ledger"] == 0)
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    use_host_addresses([a.strip() for a in args.ice_address.split(",")])
    url = args.url.rstrip("/")
    connector = aiohttp.TCPConnector(limit=max(100, args.senders * args.concurrency))
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        probe = ServerProbe(http, url, args.server_pid)
        users = await user_tokens(http, url, args.senders + 1, tokens_file=args.tokens_file,
                                  prefix="bench-gift-")
        receiver, senders = users[0], users[1:]
        if len({u.user_id for u in senders}) < len(senders) or receiver.user_id in {
            u.user_id for u in senders
        }:
            raise SystemExit("bench.gifts needs distinct users: one more token than --senders")
        room = args.room or await create_room(http, url, receiver.token)
        gift = await cheapest_gift(http, url, receiver.token)
        if args.webhook_secret:
            await asyncio.gather(*(topup(http, url, args.webhook_secret, u.user_id, args.coins)
                                   for u in senders))
        publisher = WhipPublisher([LoopedClipTrack("audio", audio_clip(), fps=50)])
        try:
            await publisher.start(http, f"{url}/whip/{room}", receiver.token)
            await wait_live(http, url, receiver.token, room)
            before = await asyncio.gather(*(wallet(http, url, u.token) for u in users))
            latencies: list[float] = []
            refused: dict[str, int] = {}
            spent: dict[str, int] = {u.user_id: 0 for u in senders}
            creator_coins = 0
            sample_a = await probe.sample()
            start = time.monotonic()
            end = start + args.duration

            async def sender_loop(user: UserToken) -> None:
                nonlocal creator_coins
                while time.monotonic() < end:
                    body = {"giftId": gift["id"], "to": receiver.user_id, "roomId": room,
                            "quantity": 1, "idempotencyKey": uuid.uuid4().hex}
                    t = time.monotonic()
                    try:
                        async with http.post(f"{url}/api/v1/gifts/send", json=body,
                                             headers=_auth(user.token)) as r:
                            data = await r.json()
                            status = r.status
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
                        continue
                    if status == 200:
                        latencies.append((time.monotonic() - t) * 1000)
                        spent[user.user_id] += data["coins"]
                        creator_coins += data["creatorCoins"]
                    else:
                        code = str(data.get("code", status))
                        refused[code] = refused.get(code, 0) + 1
                        if code == "insufficient_funds":
                            return

            await asyncio.gather(*(sender_loop(u) for u in senders for _ in range(args.concurrency)))
            elapsed = time.monotonic() - start
            sample_b = await probe.sample()
            after = await asyncio.gather(*(wallet(http, url, u.token) for u in users))
        finally:
            await publisher.stop(http, receiver.token)

    sent = len(latencies)
    mismatched = [
        u.user_id for u, b, a in zip(senders, before[1:], after[1:], strict=True)
        if b["coins"] - a["coins"] != spent[u.user_id]
    ]
    books = {
        "negative_balances": sum(1 for w in after if w["coins"] < 0 or w["earnings"] < 0),
        "senders_spent": sum(b["coins"] - a["coins"] for b, a in zip(before[1:], after[1:], strict=True)),
        "gifts_acked_coins": sum(spent.values()),
        "receiver_earned": after[0]["earnings"] - before[0]["earnings"],
        "creator_coins_acked": creator_coins,
        "senders_mismatched": len(mismatched),
    }
    books["ok"] = (books["negative_balances"] == 0 and books["senders_mismatched"] == 0
                   and books["senders_spent"] == books["gifts_acked_coins"]
                   and books["receiver_earned"] == books["creator_coins_acked"])
    cpu = None
    if sample_a.cpu_seconds is not None and sample_b.cpu_seconds is not None:
        cpu = (sample_b.cpu_seconds - sample_a.cpu_seconds) / elapsed * 100
    result: dict[str, Any] = {
        "script": "bench.gifts",
        "url": url,
        "room": room,
        "gift": gift["id"],
        "senders": len(senders),
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 2),
        "gifts_sent": sent,
        "gifts_per_s": round(sent / elapsed, 1),
        "latency_p50_ms": finite(percentile(latencies, 50), 1),
        "latency_p99_ms": finite(percentile(latencies, 99), 1),
        "refused": refused,
        "server_cpu_pct": finite(cpu),
        "books": books,
    }
    if args.database_url:
        result["ledger"] = await ledger_checks(args.database_url, args.database_schema)
    return result


COLUMNS = [("senders", "senders"), ("gifts_sent", "gifts"), ("gifts_per_s", "gifts/s"),
           ("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"),
           ("server_cpu_pct", "cpu%"), ("books_ok", "books ok"), ("ledger_ok", "ledger ok")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gifts", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--tokens-file", help="one token per line: the receiver (needs publish), then senders")
    p.add_argument("--senders", type=int, default=20, help="sending users (default 20)")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight per sender (default 2)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending (default 10)")
    p.add_argument("--room", help="a room the receiver owns (or its token names) to go live in (default: a new one)")
    p.add_argument("--webhook-secret", help="AIRWAVE_WEBHOOK_SECRET, to top the senders up")
    p.add_argument("--coins", type=int, default=100000, help="top-up per sender (default 100000)")
    p.add_argument("--database-url", help="the server's database, to check the ledger itself")
    p.add_argument("--database-schema", help="PostgreSQL schema (AIRWAVE_DATABASE_SCHEMA)")
    p.add_argument("--server-pid", type=int, help="server pid for CPU from /proc (else /metrics)")
    p.add_argument("--ice-address", default="127.0.0.1", help="addresses the publisher gathers")
    p.add_argument("--out", default="gifts.json")
    p.add_argument("--chart", help="PNG (default: --out with .png)")
    args = p.parse_args(argv)
    if args.senders < 1 or args.concurrency < 1:
        p.error("--senders and --concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, chart = run_script("gifts", args, run)
    drawn = chart_bars(chart, {"p50": result["latency_p50_ms"], "p99": result["latency_p99_ms"]},
                       "ms", f"bench.gifts: {result['gifts_per_s']} gifts/s")
    row = {**result, "books_ok": result["books"]["ok"],
           "ledger_ok": result.get("ledger", {}).get("ok")}
    print(format_table([row], COLUMNS))
    if result["refused"]:
        print(f"refused: {result['refused']}")
    print(f"books: {result['books']}")
    if "ledger" in result:
        print(f"ledger: {result['ledger']}")
    print(f"JSON: {args.out}" + (f", chart: {chart}" if drawn else ""))
    ok = result["books"]["ok"] and result.get("ledger", {}).get("ok", True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
