"""The event bus: how rooms/ tells the faces (signaling, api) what happened.

rooms/ publishes domain events (a call timed out, a stream started) on a
channel; whoever cares subscribes. In-process by default; across nodes
:class:`RedisBus` (same interface) carries them through Redis pub/sub, so a
handler on every node sees every event. ``publish(..., local=True)`` delivers
to this node's handlers only: for facts only this node should act on (its own
media sessions' events), which it then turns into cluster-wide state.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("airwave.bus")

Event = dict[str, Any]
Handler = Callable[[Event], Awaitable[None]]


REDIS_MAX_CONNECTIONS = 100  # per client, i.e. per process
REDIS_POOL_WAIT = 10.0  # seconds a command waits for a free connection before it fails


def redis_client(url: str) -> aioredis.Redis:
    """The node's Redis client: at most ``REDIS_MAX_CONNECTIONS`` connections, and a
    command that finds them all busy waits for one. redis-py's default pool instead
    fails it at once (``MaxConnectionsError``): 400 sockets closing together made the
    disconnect hooks, the heartbeat and the timers' poll fail."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_WAIT, driver_info=_driver_info()
    )
    return aioredis.Redis(connection_pool=pool)


@functools.cache
def _driver_info() -> DriverInfo:
    """What each connection tells Redis of its client (CLIENT SETINFO), made
    once: redis-py otherwise makes one per new connection, reading its own
    version from the package metadata each time (0.35 ms: 100 connections
    opened in a burst of calls cost 35 ms of the node's CPU)."""
    return DriverInfo()


def node_key(prefix: str, node_id: str) -> str:
    """The Redis key of a node's heartbeat: while it exists, the node is alive
    (``node_key(prefix, "")`` is the prefix of them all)."""
    return f"{prefix}:node:{node_id}"


class EventBus(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, channel: str, event: Event, *, local: bool = False) -> None: ...
    def subscribe(self, channel: str, handler: Handler) -> Callable[[], None]: ...


class InProcessBus:
    """Delivers each event to this process's subscribers, in order."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._handlers.clear()

    async def publish(self, channel: str, event: Event, *, local: bool = False) -> None:
        await self.deliver(channel, event)

    async def deliver(self, channel: str, event: Event) -> None:
        for handler in list(self._handlers.get(channel, ())):
            try:
                await handler(event)
            except Exception:
                log.exception("bus handler failed", extra={"channel": channel})

    def subscribe(self, channel: str, handler: Handler) -> Callable[[], None]:
        self._handlers[channel].append(handler)

        def unsubscribe() -> None:
            if handler in self._handlers.get(channel, ()):
                self._handlers[channel].remove(handler)

        return unsubscribe


class RedisBus(InProcessBus):
    """Events through Redis pub/sub to every node's subscribers.

    One connection subscribes to ``<prefix>*``; a listener task delivers each
    message to this node's handlers in order. When Redis goes away the
    listener reconnects with backoff and subscribes again; events published
    while Redis is down are lost (pub/sub keeps nothing), so durable state
    lives in the database and in Redis keys, never only on the bus.
    """

    def __init__(self, url: str, prefix: str = "airwave") -> None:
        super().__init__()
        self._url = url
        self._prefix = f"{prefix}:bus:"
        self._redis: aioredis.Redis = redis_client(url)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="redis-bus")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout=5)
        except TimeoutError:
            log.error("Redis bus: not subscribed yet; events will flow once Redis is reachable")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._redis.aclose()
        await super().close()

    async def publish(self, channel: str, event: Event, *, local: bool = False) -> None:
        if local:
            await self.deliver(channel, event)
            return
        await self._redis.publish(self._prefix + channel, json.dumps(event))

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._prefix + "*")
                self._subscribed.set()
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    channel = message["channel"].decode()[len(self._prefix) :]
                    try:
                        event = json.loads(message["data"])
                    except ValueError:
                        log.warning("Redis bus: dropped a message that is not JSON on %s", channel)
                        continue
                    await self.deliver(channel, event)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._subscribed.clear()
                log.warning("Redis bus: connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # the connection may already be gone
                    pass
