"""The Socket.IO server: one namespace, a token on connect, handlers that call rooms/ and sfu/.

Feature modules register their events with ``Signaling.on(event)``; every
request-style event is acknowledged, failures as
``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from prometheus_client import Counter, Gauge

from auth import Identity, TokenError, TokenService
from config import Settings

log = logging.getLogger("airwave.signaling")

SOCKET_CONNECTIONS = Gauge("airwave_socketio_connections", "Socket.IO connections open on this node")
SOCKET_CONNECTS = Counter(
    "airwave_socketio_connects_total", "Socket.IO connection attempts by result", ["result"]
)

EventHandler = Callable[[str, Identity, Any], Awaitable[Any]]
LifecycleHook = Callable[[str, Identity], Awaitable[None]]


class SignalError(Exception):
    """Raised by an event handler: the ack carries ``{"error": {code, message}}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def user_room(user_id: str) -> str:
    """The Socket.IO room every socket of one user is in."""
    return f"user:{user_id}"


def room_audience(room_id: str) -> str:
    """The Socket.IO room of a live/group/direct room's event audience (stream:join)."""
    return f"room:{room_id}"


def call_audience(call_id: str) -> str:
    """The Socket.IO room of both parties' sockets in a call."""
    return f"call:{call_id}"


class Signaling:
    def __init__(self, settings: Settings, tokens: TokenService) -> None:
        self.settings = settings
        self.tokens = tokens
        manager = None
        if settings.redis_url:
            manager = socketio.AsyncRedisManager(
                settings.redis_url, channel=f"{settings.redis_prefix}:socketio"
            )
        cors: Any = list(settings.cors_origins)
        if cors == ["*"]:
            cors = "*"
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            client_manager=manager,
            cors_allowed_origins=cors,
            transports=["polling", "websocket"],
            max_http_buffer_size=256 * 1024,
            logger=False,
            engineio_logger=False,
        )
        self.identities: dict[str, Identity] = {}
        self._on_connect: list[LifecycleHook] = []
        self._on_disconnect: list[LifecycleHook] = []
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)

    # ------------------------------------------------------------------ hooks
    def on_connect(self, hook: LifecycleHook) -> None:
        self._on_connect.append(hook)

    def on_disconnect(self, hook: LifecycleHook) -> None:
        self._on_disconnect.append(hook)

    def on(self, event: str) -> Callable[[EventHandler], EventHandler]:
        """Register a handler ``(sid, identity, data) -> ack payload``."""

        def decorate(handler: EventHandler) -> EventHandler:
            async def dispatch(sid: str, data: Any = None) -> Any:
                identity = self.identities.get(sid)
                if identity is None:
                    return {"error": {"code": "unauthorized", "message": "not connected"}}
                try:
                    result = await handler(sid, identity, data)
                except SignalError as exc:
                    return {"error": {"code": exc.code, "message": exc.message}}
                except Exception:
                    log.exception("event handler failed", extra={"event": event, "sid": sid})
                    return {"error": {"code": "internal_error", "message": "internal server error"}}
                return result if result is not None else {"ok": True}

            self.sio.on(event, dispatch)
            return handler

        return decorate

    # ------------------------------------------------------------- lifecycle
    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            identity = self.tokens.verify(token)
        except TokenError as exc:
            SOCKET_CONNECTS.labels(exc.code).inc()
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code}
            ) from None
        self.identities[sid] = identity
        await self.sio.enter_room(sid, user_room(identity.user_id))
        SOCKET_CONNECTS.labels("accepted").inc()
        SOCKET_CONNECTIONS.inc()
        for hook in self._on_connect:
            try:
                await hook(sid, identity)
            except Exception:
                log.exception("connect hook failed", extra={"sid": sid})

    async def _disconnect(self, sid: str, *args: Any) -> None:
        identity = self.identities.pop(sid, None)
        if identity is None:
            return
        SOCKET_CONNECTIONS.dec()
        for hook in self._on_disconnect:
            try:
                await hook(sid, identity)
            except Exception:
                log.exception("disconnect hook failed", extra={"sid": sid})

    def sockets_of(self, user_id: str) -> list[str]:
        return [sid for sid, ident in self.identities.items() if ident.user_id == user_id]

    async def close(self) -> None:
        """Disconnect this node's sockets (their disconnect hooks run while the
        database is still open), then stop the server. Engine.IO's shutdown
        alone leaves sockets to time out on their pings."""
        for sid in list(self.identities):
            try:
                await self.sio.disconnect(sid, ignore_queue=True)
            except Exception:  # a socket that is already gone
                log.debug("disconnect at shutdown failed", extra={"sid": sid})
        await self.sio.shutdown()
