"""The event bus: in-process, and through Redis across two bus instances ("nodes")."""

from __future__ import annotations

import asyncio

import pytest
import redis.utils

from events.bus import InProcessBus, RedisBus
from tests.conftest import REDIS_URL, _require_services


async def test_in_process_bus_delivers_in_order_and_survives_a_failing_handler() -> None:
    bus = InProcessBus()
    got: list[int] = []

    async def boom(event: dict) -> None:
        raise RuntimeError("handler bug")

    async def record(event: dict) -> None:
        got.append(event["n"])

    bus.subscribe("c", boom)
    unsubscribe = bus.subscribe("c", record)
    for n in range(3):
        await bus.publish("c", {"n": n})
    unsubscribe()
    await bus.publish("c", {"n": 99})
    assert got == [0, 1, 2]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_redis_bus_reaches_every_node_and_local_stays_local(backend: str) -> None:
    await _require_services()
    prefix = f"test:bus:{id(object())}:"
    a, b = RedisBus(REDIS_URL, prefix), RedisBus(REDIS_URL, prefix)
    seen_a: list[dict] = []
    seen_b: list[dict] = []

    async def on_a(event: dict) -> None:
        seen_a.append(event)

    async def on_b(event: dict) -> None:
        seen_b.append(event)

    a.subscribe("rooms", on_a)
    b.subscribe("rooms", on_b)
    await a.start()
    await b.start()
    try:
        for n in range(20):
            await a.publish("rooms", {"n": n})
        await a.publish("rooms", {"n": "local"}, local=True)
        for _ in range(100):
            if len(seen_b) == 20 and len(seen_a) == 21:
                break
            await asyncio.sleep(0.02)
        assert [e["n"] for e in seen_b] == list(range(20))
        assert [e["n"] for e in seen_a if e["n"] != "local"] == list(range(20))
        assert {"n": "local"} in seen_a and {"n": "local"} not in seen_b
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_the_redis_client_waits_for_a_connection_rather_than_failing(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More commands at once than the pool has connections: each waits for one (redis-py's
    default pool failed them with MaxConnectionsError past 100)."""
    from events.bus import REDIS_MAX_CONNECTIONS, redis_client

    await _require_services()
    client = redis_client(REDIS_URL)
    key = f"test:pool:{id(object())}"
    versions = []
    get_lib_version = redis.utils.get_lib_version

    def counted() -> str:
        versions.append(1)
        return get_lib_version()

    monkeypatch.setattr(redis.utils, "get_lib_version", counted)
    try:
        await asyncio.gather(*(client.incr(key) for _ in range(3 * REDIS_MAX_CONNECTIONS)))
        assert int(await client.get(key)) == 3 * REDIS_MAX_CONNECTIONS
        # its connections share one DriverInfo: redis-py read its version from the
        # package metadata for each new connection
        assert len(client.connection_pool._available_connections) > 1  # (redis-py internal, just a check)
        assert versions == []
    finally:
        await client.delete(key)
        await client.aclose()
