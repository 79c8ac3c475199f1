"""The media directory on its own: one node (everything is here) and Redis
(origins and call media nodes shared, void when their node's heartbeat is gone)."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from cluster import LocalMediaDirectory, NodeAddress, RedisMediaDirectory
from events.bus import node_key
from tests.conftest import REDIS_URL, _require_services

A = NodeAddress("node-a", "http://127.0.0.1:1")
B = NodeAddress("node-b", "http://127.0.0.1:2")


async def test_one_node_holds_everything() -> None:
    directory = LocalMediaDirectory(A)
    await directory.claim_origin("r1")
    assert await directory.origin_of("r1") is None  # no other node to pull from
    assert await directory.call_media_node("c1") == A


@pytest.mark.parametrize("backend", ["postgres"])
async def test_redis_directory_shares_origins_and_call_nodes(backend: str) -> None:
    await _require_services()
    prefix = f"test-dir-{uuid.uuid4().hex[:8]}"
    redis = aioredis.from_url(REDIS_URL)
    try:
        a, b = RedisMediaDirectory(redis, prefix, A), RedisMediaDirectory(redis, prefix, B)
        await redis.set(node_key(prefix, A.node), "{}")
        await a.claim_origin("r1")
        assert await b.origin_of("r1") == A
        await b.release_origin("r1")  # not b's claim: it stays
        assert await b.origin_of("r1") == A
        await a.release_origin("r1")
        assert await b.origin_of("r1") is None

        assert await a.call_media_node("c1") == A
        assert await a.call_media_node("c1") == A  # its own claim, again
        assert 0 < await redis.ttl(f"{prefix}:call:media:c1") <= 24 * 3600
        assert await b.call_media_node("c1") == A  # the first node to ask holds it
        await redis.delete(node_key(prefix, A.node))  # node a died
        assert await b.call_media_node("c1") == B
        await a.claim_origin("r2")
        assert await b.origin_of("r2") is None
    finally:
        async for key in redis.scan_iter(match=f"{prefix}:*"):
            await redis.delete(key)
        await redis.aclose()
