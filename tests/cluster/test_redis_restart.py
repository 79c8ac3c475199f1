"""Redis restarted under a running cluster: nodes reconnect and carry on; chat
and coins (in PostgreSQL) are all still there. A private redis-server on a free
port (no persistence), never the suite's shared one."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from tests.cluster.cluster_clients import Peer, rest
from tests.cluster.nodes import Cluster
from tests.conftest import free_port
from tests.gifts.gift_clients import post_topup

WEBHOOK_SECRET = "cluster-webhook-" + "h" * 24


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    assert server, "redis-server must be installed (tests/prepare-machine.sh)"
    return subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def wait_redis(url: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while True:
        client = aioredis.from_url(url)
        try:
            await client.ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        finally:
            await client.aclose()


async def test_nodes_carry_on_after_redis_restarts(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = start_redis(port, tmp_path)
    try:
        await wait_redis(url)
        async with Cluster(3, redis_url=url, webhook_secret=WEBHOOK_SECRET) as cluster:
            a, b, c = cluster.nodes
            ann = await Peer.connect(cluster, a, "ann")
            cid = await Peer.connect(cluster, c, "cid")
            status, room = await rest(cluster, b, "POST", "/api/v1/chats", "ann", {"userId": "cid"})
            room_id = room["id"]
            await ann.call("chat:send", {"roomId": room_id, "text": "before", "clientId": "1"})
            await cid.wait("chat:message")
            status, topup, _ = await post_topup(
                b.url, {"eventId": f"pay-{uuid.uuid4().hex}", "userId": "ann", "coins": 40}, secret=WEBHOOK_SECRET
            )
            assert status == 200, topup

            redis_proc.terminate()
            redis_proc.wait(timeout=10)
            await asyncio.sleep(1.0)
            redis_proc = start_redis(port, tmp_path)
            await wait_redis(url)
            for node in cluster.nodes:
                await node.wait_ready(within=20)

            # New sockets on every node work, and chat crosses nodes again.
            ann2 = await Peer.connect(cluster, a, "ann")
            cid2 = await Peer.connect(cluster, c, "cid")
            deadline = time.monotonic() + 15
            while True:  # the bus listeners resubscribe with backoff
                ack = await ann2.call("chat:send", {"roomId": room_id, "text": "after", "clientId": str(time.time())})
                assert "error" not in ack, ack
                try:
                    await cid2.wait("chat:message", within=1.0)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
            status, page = await rest(cluster, b, "GET", f"/api/v1/rooms/{room_id}/messages?limit=100", "cid")
            texts = [m["text"] for m in page["messages"]]
            assert texts[0] == "before" and "after" in texts
            assert [m["seq"] for m in page["messages"]] == list(range(1, len(texts) + 1))
            status, wallet = await rest(cluster, c, "GET", "/api/v1/wallet", "ann")
            assert status == 200 and wallet["coins"] == 40, wallet
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
