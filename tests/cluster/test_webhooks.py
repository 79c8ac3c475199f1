"""Outgoing webhooks across nodes: a node SIGKILLed after its transaction
committed the event, while it was delivering it, leaves the event to another
node, which delivers it once its claim (lease) expires; the two nodes never
send one event twice while both run."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import asyncpg

from tests.cluster.nodes import Cluster
from tests.conftest import PG_URL
from tests.gifts.gift_clients import WEBHOOK_SECRET, post_topup
from tests.webhooks.conftest import OUT_SECRETS
from tests.webhooks.receiver import Receiver


async def _lease_owner(cluster: Cluster) -> list[str | None]:
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        rows = await conn.fetch(f'SELECT lease_owner FROM "{cluster.schema}".webhook_outbox')
    finally:
        await conn.close()
    return [r["lease_owner"] for r in rows]


async def _wait_held(receiver: Receiver, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while receiver.held == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("no delivery reached the receiver")
        await asyncio.sleep(0.05)


async def test_a_killed_node_leaves_its_event_to_another_node() -> None:
    receiver = await Receiver(OUT_SECRETS).start()
    try:
        async with Cluster(
            2,
            webhook_urls=json.dumps([{"url": receiver.url, "secrets": list(OUT_SECRETS)}]),
            webhook_secret=WEBHOOK_SECRET,
            webhook_timeout=3,  # a claim lasts 3 + 5 s
            webhook_poll_interval=0.2,
        ) as cluster:
            a, b = cluster.nodes
            await b.terminate()  # only A can claim what A commits
            receiver.hold = asyncio.Event()
            status, body, _ = await post_topup(a.url, {"eventId": "pay_k1", "userId": "kim", "coins": 9})
            assert status == 200, body  # committed, with its wallet.credited event
            await _wait_held(receiver)  # A claimed it and is sending it: the receiver hangs
            assert await _lease_owner(cluster) == [a.node_id]
            killed_at = time.monotonic()
            a.kill()
            await asyncio.sleep(0.3)  # the receiver notices A's connection is gone
            receiver.hold.set()
            assert receiver.events == []

            await cluster.restart(b)
            await receiver.wait_for(1, within=20)
            # Not before A's claim ran out (8 s after it was taken, shortly before the kill).
            assert time.monotonic() - killed_at > 5
            (event,) = receiver.events
            assert (event["type"], event["data"]["userId"], event["data"]["balance"]) == (
                "wallet.credited", "kim", 9
            )

            # Both nodes running: each event reaches the receiver once, in order per user.
            await cluster.restart(a)
            receiver.events.clear()
            async with aiohttp.ClientSession():
                results = await asyncio.gather(*(
                    post_topup(node.url, {"eventId": f"pay_{uuid.uuid4().hex}", "userId": f"u{n % 3}",
                                          "coins": 1})
                    for n, node in enumerate([a, b] * 10)
                ))
            assert all(status == 200 for status, _, _ in results)
            await receiver.wait_for(20, within=20)
            await asyncio.sleep(1.0)  # a second delivery by the other node would arrive by now
            assert len(receiver.events) == 20 == len({e["id"] for e in receiver.events})
            for user in ("u0", "u1", "u2"):
                balances = [e["data"]["balance"] for e in receiver.events if e["data"]["userId"] == user]
                assert balances == list(range(1, len(balances) + 1)), (user, balances)
    finally:
        await receiver.close()


