"""The Socket.IO server: one namespace, a token on connect, handlers that call rooms/ and sfu/.

Feature modules register their events with ``Signaling.on(event)``; every
request-style event is acknowledged, failures as
``{"error": {"code": ..., "message": ...}}``.

The connect payload is ``{token, caps?}``: ``caps: ["batch"]`` lets the server coalesce a
large room's chat messages and viewer counts into one ``batch`` event ``[{event, data}, ...]``
per short tick (signaling/fanout.py); other sockets keep one event per message.

A socket lives as long as its token: at ``exp`` the server sends
``auth:expired {code: "token_expired"}`` and disconnects it, and every event
checks expiry and revocation first. ``auth:refresh {token}`` hands the server a
fresh token of the same user before then (ack ``{expiresAt}``). A suspended user
or revoked token ends the socket with ``auth:revoked {code}`` (``end_sockets``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from prometheus_client import Counter, Gauge

from auth import Identity, TokenError, TokenService
from config import Settings
from rooms.errors import DomainError
from rooms.rate_limit import RateLimits
from signaling.fanout import (
    BATCH_CAPABILITY,
    FanoutManager,
    FanoutRedisManager,
    websocket_driver,
)

log = logging.getLogger("airwave.signaling")

SOCKET_CONNECTIONS = Gauge("airwave_socketio_connections", "Socket.IO connections open on this node")
SOCKET_CONNECTS = Counter(
    "airwave_socketio_connects_total", "Socket.IO connection attempts by result", ["result"]
)
CONNECTS_ACCEPTED = SOCKET_CONNECTS.labels("accepted")  # looked up once, not per connect

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


def contains_nul(value: Any) -> bool:
    """Whether decoded JSON holds a NUL character anywhere: PostgreSQL text cannot,
    so such input is refused at the edge (HTTP bodies too, api/bodies.py)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(v) for v in value)
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class StrictJson:
    """The JSON python-socketio writes and reads: no NaN or Infinity either way. The
    encoders and the decoder are made once (``json.dumps``/``loads`` with options build a
    new one per call); python-socketio passes ``separators`` only."""

    _encoders: dict[tuple[str, str] | None, json.JSONEncoder] = {}
    _decoder = json.JSONDecoder(parse_constant=_refuse_constant)

    @staticmethod
    def dumps(value: Any, separators: tuple[str, str] | None = None, **options: Any) -> str:
        if options:
            return json.dumps(value, allow_nan=False, separators=separators, **options)
        encoder = StrictJson._encoders.get(separators)
        if encoder is None:
            encoder = StrictJson._encoders[separators] = json.JSONEncoder(
                allow_nan=False, separators=separators)
        return encoder.encode(value)

    @staticmethod
    def loads(text: str | bytes, **options: Any) -> Any:
        if options or not isinstance(text, str):
            return json.loads(text, parse_constant=_refuse_constant, **options)
        return StrictJson._decoder.decode(text)


class Signaling:
    def __init__(self, settings: Settings, tokens: TokenService, limits: RateLimits) -> None:
        self.settings = settings
        self.tokens = tokens
        self.limits = limits
        manager: FanoutManager
        if settings.redis_url:
            manager = FanoutRedisManager(
                settings.redis_url, channel=f"{settings.redis_prefix}:socketio"
            )
        else:
            manager = FanoutManager()
        manager.send_queue_limit = settings.socketio_send_queue
        manager.large_room = settings.socketio_large_room
        manager.batch_interval = settings.socketio_batch_interval
        manager.chat_delivery_rate = settings.chat_delivery_rate
        self.manager = manager
        cors: Any = list(settings.cors_origins)
        if cors == ["*"]:
            cors = "*"
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            client_manager=manager,
            cors_allowed_origins=cors,
            transports=["polling", "websocket"],
            max_http_buffer_size=256 * 1024,
            json=StrictJson,
            logger=False,
            engineio_logger=False,
        )
        # a copy: engineio's driver table is one dict per module, shared by every server
        self.sio.eio._async = {**self.sio.eio._async,
                               "websocket": websocket_driver(settings.socketio_ws_compression)}
        self.identities: dict[str, Identity] = {}
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self._ending: set[asyncio.Task[None]] = set()
        self._on_connect: list[LifecycleHook] = []
        self._on_disconnect: list[LifecycleHook] = []
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self.sio.on("auth:refresh", self._refresh)

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
                refusal = self._token_refusal(identity)
                if refusal is not None:
                    return {"error": {"code": refusal.code, "message": refusal.message}}
                if not identity.is_admin and not await self.limits.allow("events", identity.user_id):
                    return {"error": {"code": "rate_limited", "message": "too many events: slow down"}}
                if contains_nul(data):
                    return {"error": {"code": "bad_request", "message": "strings may not contain NUL"}}
                try:
                    result = await handler(sid, identity, data)
                except (SignalError, DomainError) as exc:
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
        if not identity.is_admin and not await self.limits.allow("actions", identity.user_id):
            SOCKET_CONNECTS.labels("rate_limited").inc()
            raise socketio.exceptions.ConnectionRefusedError(
                "too many connections: slow down", {"code": "rate_limited"}
            )
        self.identities[sid] = identity
        manager = self.sio.manager
        if isinstance(manager, FanoutManager):
            manager.socket_opened(manager.eio_sid_from_sid(sid, "/"))
            caps = auth.get("caps") if isinstance(auth, dict) else None
            if isinstance(caps, list) and BATCH_CAPABILITY in caps[:16]:
                manager.batch_capable.add(sid)
        self._expire_at(sid, identity)
        await self.sio.enter_room(sid, user_room(identity.user_id))
        CONNECTS_ACCEPTED.inc()
        SOCKET_CONNECTIONS.inc()
        for hook in self._on_connect:
            try:
                await hook(sid, identity)
            except Exception:
                log.exception("connect hook failed", extra={"sid": sid})

    async def _disconnect(self, sid: str, *args: Any) -> None:
        identity = self.identities.pop(sid, None)
        expiry = self._expiries.pop(sid, None)
        if expiry is not None:
            expiry.cancel()
        if identity is None:
            return
        SOCKET_CONNECTIONS.dec()
        for hook in self._on_disconnect:
            try:
                await hook(sid, identity)
            except Exception:
                log.exception("disconnect hook failed", extra={"sid": sid})

    # ---------------------------------------------------------- token lifetime
    def _token_refusal(self, identity: Identity) -> TokenError | None:
        if identity.expires_at and identity.expires_at <= time.time():
            return TokenError("token_expired", "the token has expired: send auth:refresh with a fresh one")
        return self.tokens.revocations.refusal(identity)

    def _expire_at(self, sid: str, identity: Identity) -> None:
        previous = self._expiries.pop(sid, None)
        if previous is not None:
            previous.cancel()
        if identity.expires_at:
            delay = max(0.0, identity.expires_at - time.time())
            loop = asyncio.get_running_loop()
            self._expiries[sid] = loop.call_later(delay, self._spawn_expiry, sid, identity)

    def _spawn_expiry(self, sid: str, identity: Identity) -> None:
        task = asyncio.get_running_loop().create_task(self._expired(sid, identity))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _expired(self, sid: str, identity: Identity) -> None:
        if self.identities.get(sid) is identity:  # not refreshed meanwhile
            await self._end_socket(sid, "auth:expired", "token_expired")

    async def _end_socket(self, sid: str, event: str, code: str) -> None:
        try:
            await self.sio.emit(event, {"code": code}, to=sid, ignore_queue=True)
            await self.sio.disconnect(sid, ignore_queue=True)
        except Exception:  # a socket that is already gone
            log.debug("ending a socket failed", extra={"sid": sid})

    async def _refresh(self, sid: str, data: Any = None) -> dict[str, Any]:
        """``auth:refresh {token}``: a fresh token of the same user replaces the socket's."""
        current = self.identities.get(sid)
        if current is None:
            return {"error": {"code": "unauthorized", "message": "not connected"}}
        token = data.get("token") if isinstance(data, dict) else None
        try:
            fresh = self.tokens.verify(token)
        except TokenError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        if fresh.user_id != current.user_id:
            return {"error": {"code": "wrong_user", "message": "the new token is for another user"}}
        self.identities[sid] = fresh
        self._expire_at(sid, fresh)
        return {"expiresAt": fresh.expires_at}

    async def end_sockets(self, matches: Callable[[Identity], bool], code: str) -> int:
        """End this node's sockets whose identity ``matches`` (revocation):
        ``auth:revoked {code}``, then disconnect. How many were ended."""
        ended = [sid for sid, identity in list(self.identities.items()) if matches(identity)]
        for sid in ended:
            await self._end_socket(sid, "auth:revoked", code)
        return len(ended)

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
