"""Timers for the domain: "at this wall-clock time, hand this event back to me".

The interface is deliberately small so that a Redis-backed implementation
(the multi-node issue) can slot in: ``schedule(key, at_epoch, event)`` sets or
replaces the timer named ``key``; ``cancel(*keys)`` removes them; when it fires,
the handler given to ``on_fire`` receives the event dict. Times are epoch
seconds, so a timer set by one process can be fired by another.

A timer may fire late, and a distributed implementation may (rarely) fire a
timer whose cancel raced with it, or fire it again after the node that
claimed it died while handling it: the receiver makes firing act once by
checking the state the event refers to (``calls/calls.py`` does a conditional
UPDATE on the call row).

:class:`InProcessTimers` uses ``loop.call_at`` handles: no task exists while a
timer waits; a fired timer runs its handler in a short task that is awaited
at close. It is the embedded default; its timers end with the process.

:class:`RedisTimers` keeps deadlines in Redis, so they outlive the node that
set them: a sorted set ``<prefix>:timers:<name>`` of key -> due epoch and a
hash of the events. Every node polls (``ZRANGEBYSCORE ... LIMIT`` inside one
Lua script, every ``poll_interval``) and claims due timers atomically, so one
node fires each. A claimed timer moves to an in-flight set with a lease and
is acknowledged after its handler returns; a claim whose node died (SIGKILL)
before the acknowledgement is taken over by another node when the lease
runs out. The node that schedules a timer also wakes its poller at the deadline
(a ``call_at`` on its loop), so a timer is claimed on time while that node lives,
and within a poll interval by any node otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("airwave.timers")

TimerEvent = dict[str, Any]
TimerHandler = Callable[[TimerEvent], Awaitable[None]]


class TimerService(Protocol):
    def on_fire(self, handler: TimerHandler) -> None:
        """The one handler fired timers are delivered to."""
        ...

    async def schedule(self, key: str, at_epoch: float, event: TimerEvent) -> None:
        """Fire ``event`` at ``at_epoch`` (now if past); replaces a timer with the same key."""
        ...

    async def cancel(self, *keys: str) -> bool:
        """Forget the timers ``keys`` (in one round trip with Redis); True when any
        was pending."""
        ...

    async def close(self) -> None:
        """Stop firing timers here and wait for handlers that are running
        (in-process timers are dropped; Redis timers stay for other nodes)."""
        ...


class InProcessTimers:
    """Timers of this process on its event loop; lost when the process ends."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._handler: TimerHandler | None = None
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    def on_fire(self, handler: TimerHandler) -> None:
        self._handler = handler

    async def schedule(self, key: str, at_epoch: float, event: TimerEvent) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._drop(key)
        delay = max(0.0, at_epoch - self._clock())
        self._pending[key] = loop.call_at(loop.time() + delay, self._fire, key, dict(event))

    async def cancel(self, *keys: str) -> bool:
        return any([self._drop(key) for key in keys])

    def pending(self) -> list[str]:
        """Keys of the timers still waiting (for tests and debugging)."""
        return list(self._pending)

    async def close(self) -> None:
        self._closed = True
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    def _drop(self, key: str) -> bool:
        handle = self._pending.pop(key, None)
        if handle is None:
            return False
        handle.cancel()
        return True

    def _fire(self, key: str, event: TimerEvent) -> None:
        self._pending.pop(key, None)
        if self._handler is None or self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(key, event), name=f"timer-{key}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _deliver(self, key: str, event: TimerEvent) -> None:
        assert self._handler is not None
        try:
            await self._handler(event)
        except Exception:
            log.exception("timer handler failed", extra={"timer": key})


# KEYS: due zset, events hash, in-flight zset, in-flight hash.
# ARGV: now, lease seconds, limit. Returns [key, event, key, event, ...]:
# timers due (or in flight past their lease), now in flight until now + lease.
_CLAIM = """
local out = {}
local limit = tonumber(ARGV[3])
local lease_until = tonumber(ARGV[1]) + tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit)
for _, key in ipairs(due) do
  local event = redis.call('HGET', KEYS[2], key)
  redis.call('ZREM', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
  if event then
    redis.call('ZADD', KEYS[3], lease_until, key)
    redis.call('HSET', KEYS[4], key, event)
    table.insert(out, key)
    table.insert(out, event)
  end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, limit)
for _, key in ipairs(stale) do
  local event = redis.call('HGET', KEYS[4], key)
  if event then
    redis.call('ZADD', KEYS[3], lease_until, key)
    table.insert(out, key)
    table.insert(out, event)
  else
    redis.call('ZREM', KEYS[3], key)
  end
end
return out
"""

# KEYS: due zset, events hash, in-flight zset, in-flight hash. ARGV: key, due, event.
_SCHEDULE = """
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# KEYS: due zset, events hash, in-flight zset, in-flight hash. ARGV: the keys.
# Returns how many were pending.
_CANCEL = """
local pending = redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
redis.call('ZREM', KEYS[3], unpack(ARGV))
redis.call('HDEL', KEYS[4], unpack(ARGV))
return pending
"""

# KEYS: in-flight zset, in-flight hash. ARGV: key, the event that was handled.
# Only that event: a newer one set under the same key meanwhile stays.
_ACK = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


class RedisTimers:
    """Timers kept in Redis, fired by exactly one live node.

    ``name`` separates the timers of one service (``calls``, ``rooms``) from
    another's: each service's handler only ever sees its own events. The
    handler runs at least once per timer (again only if the node that ran it
    died before acknowledging it, after ``lease`` seconds), so it must act
    once by checking state, as the call service does.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        name: str,
        *,
        poll_interval: float = 0.1,
        lease: float = 10.0,
        batch: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        base = f"{prefix}:timers:{name}"
        self.keys = [base, f"{base}:events", f"{base}:inflight", f"{base}:inflight:events"]
        self.poll_interval = poll_interval
        self.lease = lease
        self.batch = batch
        self._clock = clock
        self._handler: TimerHandler | None = None
        self._claim = redis.register_script(_CLAIM)
        self._schedule = redis.register_script(_SCHEDULE)
        self._cancel = redis.register_script(_CANCEL)
        self._ack = redis.register_script(_ACK)
        self._poller: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._wake: asyncio.Event | None = None

    def on_fire(self, handler: TimerHandler) -> None:
        self._handler = handler

    def start(self) -> None:
        """Begin polling (on the running loop); idempotent."""
        if self._poller is None and not self._closed:
            self._wake = asyncio.Event()
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="redis-timers")

    async def schedule(self, key: str, at_epoch: float, event: TimerEvent) -> None:
        if self._closed:
            return
        self.start()
        await self._schedule(keys=self.keys, args=[key, repr(float(at_epoch)), json.dumps(event)])
        # the node that set it claims it at its deadline, not at its next poll (a millisecond
        # late so that it is due by the clock the claim reads); the others keep polling
        loop = asyncio.get_running_loop()
        delay = max(0.0, at_epoch - self._clock()) + 0.001
        loop.call_at(loop.time() + delay, self._wake_up)

    def _wake_up(self) -> None:
        if self._wake is not None and not self._closed:
            self._wake.set()

    async def cancel(self, *keys: str) -> bool:
        if not keys:
            return False
        return bool(await self._cancel(keys=self.keys, args=list(keys)))

    async def pending(self) -> list[str]:
        """Keys of the timers still waiting (for tests and debugging)."""
        return [k.decode() for k in await self._redis.zrange(self.keys[0], 0, -1)]

    async def close(self) -> None:
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def fire_due(self) -> int:
        """Claim the timers that are due and start their handlers; how many."""
        claimed = await self._claim(
            keys=self.keys, args=[repr(self._clock()), repr(self.lease), self.batch]
        )
        for i in range(0, len(claimed), 2):
            key, raw = claimed[i].decode(), claimed[i + 1]
            task = asyncio.get_running_loop().create_task(self._deliver(key, raw), name=f"timer-{key}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return len(claimed) // 2

    async def _poll(self) -> None:
        failing = False
        while True:
            try:
                full = await self.fire_due() >= self.batch
                if failing:
                    log.info("Redis timers: polling again")
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("Redis timers: cannot poll (%s); retrying", exc)
                failing = True
                full = False
            except Exception:
                log.exception("Redis timers: poll failed")
                full = False
            if not full:
                # jitter spreads the nodes' polls over the interval; a deadline of a timer
                # this node set wakes it early
                assert self._wake is not None
                try:
                    async with asyncio.timeout(self.poll_interval * random.uniform(0.75, 1.25)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()

    async def _deliver(self, key: str, raw: bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            log.warning("Redis timers: dropped timer %s with an unreadable event", key)
            event = None
        if event is not None and self._handler is not None:
            try:
                await self._handler(event)
            except Exception:
                log.exception("timer handler failed", extra={"timer": key})
        for attempt in range(3):
            try:
                await self._ack(keys=self.keys[2:], args=[key, raw])
                return
            except (RedisError, OSError):
                await asyncio.sleep(0.2 * (attempt + 1))
        log.warning("Redis timers: could not acknowledge %s; it may fire again after its lease", key)


__all__ = ["InProcessTimers", "RedisTimers", "TimerEvent", "TimerHandler", "TimerService"]
