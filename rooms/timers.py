"""Timers for the domain: "at this wall-clock time, hand this event back to me".

The interface is deliberately small so that a Redis-backed implementation
(the multi-node issue) can slot in: ``schedule(key, at_epoch, event)`` sets or
replaces the timer named ``key``; ``cancel(key)`` removes it; when it fires,
the handler given to ``on_fire`` receives the event dict. Times are epoch
seconds, so a timer set by one process can be fired by another.

A timer may fire late, and a distributed implementation may (rarely) fire a
timer whose cancel raced with it: the receiver makes firing act once by
checking the state the event refers to (``rooms/calls.py`` does a conditional
UPDATE on the call row).

:class:`InProcessTimers` uses ``loop.call_at`` handles: no task exists while a
timer waits; a fired timer runs its handler in a short task that is awaited
at close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

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

    async def cancel(self, key: str) -> None:
        """Forget the timer ``key``; nothing happens if there is none."""
        ...

    async def close(self) -> None:
        """Drop every pending timer and wait for handlers that are running."""
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

    async def cancel(self, key: str) -> None:
        self._drop(key)

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

    def _drop(self, key: str) -> None:
        handle = self._pending.pop(key, None)
        if handle is not None:
            handle.cancel()

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


__all__ = ["InProcessTimers", "TimerEvent", "TimerHandler", "TimerService"]
