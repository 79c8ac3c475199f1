"""The one registration point for the media engine's observers.

``MediaEngine`` has one slot per observer (``on_publisher_started``,
``on_publisher_ended``, ``on_session_closed``, ``on_renegotiation_needed``,
``on_layer_changed``).
:class:`EngineObservers` fills each slot once and fans out to every feature
that subscribed, in subscription order (install order), so no feature
overwrites or chains another's.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sfu import MediaEngine
from sfu.engine import (
    LayerChanged,
    PublisherEnded,
    PublisherStarted,
    RenegotiationNeeded,
    SessionClosed,
)

log = logging.getLogger("airwave.engine_events")


class EngineObservers:
    def __init__(self, engine: MediaEngine) -> None:
        self.publisher_started: list[PublisherStarted] = []
        self.publisher_ended: list[PublisherEnded] = []
        self.session_closed: list[SessionClosed] = []
        self.renegotiation_needed: list[RenegotiationNeeded] = []
        self.layer_changed: list[LayerChanged] = []
        engine.on_publisher_started = _fan_out("publisher_started", self.publisher_started)
        engine.on_publisher_ended = _fan_out("publisher_ended", self.publisher_ended)
        engine.on_session_closed = _fan_out("session_closed", self.session_closed)
        engine.on_renegotiation_needed = _fan_out("renegotiation_needed", self.renegotiation_needed)
        engine.on_layer_changed = _fan_out("layer_changed", self.layer_changed)


def _fan_out(name: str, subscribers: list[Any]) -> Callable[..., Awaitable[None] | None]:
    """Call every subscriber; what they return to await is awaited in order."""

    def notify(*args: Any) -> Awaitable[None] | None:
        pending: list[Awaitable[Any]] = []
        for subscriber in list(subscribers):
            try:
                result = subscriber(*args)
            except Exception:
                log.exception("%s observer failed", name)
                continue
            if inspect.isawaitable(result):
                pending.append(result)
        return _await_each(name, pending) if pending else None

    return notify


async def _await_each(name: str, pending: list[Awaitable[Any]]) -> None:
    for awaitable in pending:
        try:
            await awaitable
        except Exception:
            log.exception("%s observer failed", name)


__all__ = ["EngineObservers"]
