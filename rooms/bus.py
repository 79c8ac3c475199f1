"""The event bus: how rooms/ tells the faces (signaling, api) what happened.

rooms/ publishes domain events (a call timed out, a stream started) on a
channel; whoever cares subscribes. In-process by default; across nodes the
Redis implementation (same interface) carries them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger("airwave.bus")

Event = dict[str, Any]
Handler = Callable[[Event], Awaitable[None]]


class EventBus(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, channel: str, event: Event) -> None: ...
    def subscribe(self, channel: str, handler: Handler) -> Callable[[], None]: ...


class InProcessBus:
    """Delivers each event to this process's subscribers, in order."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._handlers.clear()

    async def publish(self, channel: str, event: Event) -> None:
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
