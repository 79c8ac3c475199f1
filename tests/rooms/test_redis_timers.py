"""RedisTimers: the node that schedules a timer claims it at its deadline, not at its next
poll; another node still claims it by polling; a cancelled timer does not fire."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from events.timers import RedisTimers
from tests.conftest import _require_services, redis_url


async def _timers(client: aioredis.Redis, prefix: str, poll_interval: float) -> tuple[
        RedisTimers, list[Any]]:
    fired: list[Any] = []
    timers = RedisTimers(client, prefix, "test", poll_interval=poll_interval)

    async def handler(event: Any) -> None:
        fired.append(event)

    timers.on_fire(handler)
    timers.start()
    await asyncio.sleep(0.05)  # its first poll finds nothing due and goes to sleep
    return timers, fired


async def test_the_scheduling_node_fires_at_the_deadline_without_a_poll() -> None:
    await _require_services()
    client = aioredis.from_url(redis_url())
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    timers, fired = await _timers(client, prefix, poll_interval=3600)  # never polls again
    try:
        loop = asyncio.get_running_loop()
        await timers.schedule("ring:1", time.time() + 0.2, {"type": "ring", "n": 1})
        await timers.schedule("ring:2", time.time() + 0.2, {"type": "ring", "n": 2})
        assert await timers.cancel("ring:2")
        deadline = loop.time() + 5
        while not fired and loop.time() < deadline:  # noqa: ASYNC110 - polled state
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert fired == [{"type": "ring", "n": 1}]  # the cancelled one never fires
        assert await timers.pending() == []
    finally:
        await timers.close()
        await client.aclose()


async def test_another_node_claims_it_by_polling() -> None:
    await _require_services()
    client = aioredis.from_url(redis_url())
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    setter, set_fired = await _timers(client, prefix, poll_interval=3600)
    other, other_fired = await _timers(client, prefix, poll_interval=0.05)
    try:
        await setter.schedule("ring:3", time.time() + 0.2, {"type": "ring", "n": 3})
        await setter.close()  # the node that set it is gone before the deadline
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not other_fired and loop.time() < deadline:  # noqa: ASYNC110 - polled state
            await asyncio.sleep(0.02)
        assert other_fired == [{"type": "ring", "n": 3}] and set_fired == []
    finally:
        await other.close()
        await client.aclose()


async def test_cancel_forgets_several_timers_in_one_call() -> None:
    await _require_services()
    client = aioredis.from_url(redis_url())
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    timers, fired = await _timers(client, prefix, poll_interval=0.05)
    try:
        at = time.time() + 0.2
        for n in range(4):
            await timers.schedule(f"call:{n}", at, {"type": "end", "n": n})
        assert await timers.cancel("call:0", "call:1", "call:never-set")
        assert not await timers.cancel("call:0", "call:never-set")  # none of these pending
        await asyncio.sleep(0.6)
        assert sorted(e["n"] for e in fired) == [2, 3]
        assert await timers.pending() == []
    finally:
        await timers.close()
        await client.aclose()
