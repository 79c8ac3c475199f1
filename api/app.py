"""The app factory: one aiohttp application with Socket.IO on the same port.

Each feature is a module in ``FEATURES`` with ``routes`` (an ApiRoutes table,
documented in OpenAPI) and optionally ``install(airwave, app)``, which builds
the feature's services, registers its Socket.IO events and bus subscriptions,
and appends startup/cleanup hooks to the app.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import fields
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

import redis.asyncio as aioredis
from aiohttp import web

from api import (
    admin,
    calls,
    dev,
    edge,
    gifts,
    health,
    ice,
    inbox,
    media,
    nodes,
    payouts,
    recordings,
    revocation,
    rooms,
    rtmp,
    webapp,
    webhook_events,
    webhooks,
)
from api.auth_http import TOKENS_KEY
from api.components import AIRWAVE, Airwave, Services
from api.errors import error_middleware
from api.limits import rate_limit_middleware
from api.metrics import NODE_KEY
from api.openapi import build_document
from auth import TokenService
from cluster import Cluster, node_id_for
from config import Settings
from events.bus import InProcessBus, RedisBus, redis_client
from rooms.rate_limit import InProcessTokenBucket, Limit, RateLimiter, RateLimits
from rooms.redis_state import RedisTokenBucket
from rooms.social import SocialGraph
from sfu import MediaEngine
from signaling import Signaling
from store import Database, DatabaseUnavailable, migrate
from turn import IceServerProvider, StunServer

log = logging.getLogger("airwave")

SERVE_STUN: web.AppKey[bool] = web.AppKey("serve_stun", bool)

FEATURES: list[ModuleType] = [
    health, ice, media, nodes, webhook_events, rooms, inbox, gifts, webhooks, payouts, dev,
    webapp, calls, edge, admin, revocation, rtmp, recordings,
]


def check_features(features: list[ModuleType]) -> None:
    """The order contract of FEATURES: a feature's ``NEEDS`` are ``PROVIDES`` of
    features before it, and every name is one slot of :class:`Services`,
    provided once."""
    slots = {f.name for f in fields(Services)}
    provided: set[str] = set()
    for feature in features:
        name = feature.__name__
        for need in getattr(feature, "NEEDS", ()):
            if need not in provided:
                raise ValueError(f"{name} needs {need!r}, which no feature before it provides")
        for slot in getattr(feature, "PROVIDES", ()):
            if slot not in slots:
                raise ValueError(f"{name} provides {slot!r}, which is not a field of api.components.Services")
            if slot in provided:
                raise ValueError(f"{name} provides {slot!r} a second time")
            provided.add(slot)
    if provided != slots:
        raise ValueError(f"no feature provides {sorted(slots - provided)}")


check_features(FEATURES)


def airwave_version() -> str:
    try:
        return version("airwave")
    except PackageNotFoundError:  # running from a source tree
        return "0.0.0"


async def create_app(settings: Settings, *, serve_stun: bool = True) -> web.Application:
    """``serve_stun=False`` for a worker whose supervisor runs the STUN server."""
    app = web.Application(
        middlewares=[error_middleware, rate_limit_middleware], client_max_size=1024 * 1024
    )
    tokens = TokenService(settings)
    db = await Database.connect(settings)
    redis = redis_client(settings.redis_url) if settings.redis_url else None
    limits = rate_limits(settings, redis)
    signaling = Signaling(settings, tokens, limits)
    airwave = Airwave(
        settings=settings,
        tokens=tokens,
        db=db,
        bus=RedisBus(settings.redis_url, settings.redis_prefix) if settings.redis_url else InProcessBus(),
        signaling=signaling,
        media=MediaEngine(settings, connect_timeout=settings.media_connect_timeout),
        ice=IceServerProvider(settings),
        social=SocialGraph(db),
        limits=limits,
        redis=redis,
        openapi=build_document([f.routes for f in FEATURES], airwave_version()),
    )
    airwave.node_id = node_id_for(settings.node_id, settings.port)
    airwave.cluster = Cluster.build(settings, tokens, airwave.media, redis, airwave.node_id, airwave.spawn)
    app[AIRWAVE] = airwave
    app[SERVE_STUN] = serve_stun
    app[TOKENS_KEY] = tokens
    app[NODE_KEY] = airwave.node_id
    signaling.sio.attach(app)
    app.on_startup.append(_start)
    for feature in FEATURES:
        feature.routes.add_to(app)
        install = getattr(feature, "install", None)
        if install is not None:
            install(airwave, app)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    for hooks in (app.on_shutdown, app.on_cleanup):
        hooks[:] = [bounded_step(hook) for hook in hooks]
    return app


# A shutdown or cleanup step that has not finished by then is left behind (and named
# in the log): a node told to stop stops, whatever one of its parts waits for.
SHUTDOWN_STEP_TIMEOUT = 20.0


def bounded_step(step: Callable[[web.Application], Awaitable[None]]) -> Callable[[web.Application], Awaitable[None]]:
    """``step`` as a shutdown or cleanup hook that returns after SHUTDOWN_STEP_TIMEOUT
    at the latest; a step's own error is raised as before."""
    name = getattr(step, "__qualname__", repr(step))

    @functools.wraps(step)
    async def run(app: web.Application) -> None:
        task = asyncio.ensure_future(step(app))
        done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_STEP_TIMEOUT)
        if not done:
            task.cancel()
            log.error("shutdown step %s did not finish within %.0f s; the node stops without it",
                      name, SHUTDOWN_STEP_TIMEOUT)
            return
        task.result()

    return run


def rate_limits(settings: Settings, redis_client: aioredis.Redis | None) -> RateLimits:
    """The client rate limits, shared by every node through Redis when there is one."""

    def bucket(rate: float, burst: float) -> RateLimiter:
        if redis_client is not None:
            return RedisTokenBucket(redis_client, settings.redis_prefix, rate, burst)
        return InProcessTokenBucket(rate, burst)

    return RateLimits([
        Limit("http", settings.rate_limit_http),
        Limit("http_ip", settings.rate_limit_http_ip),
        Limit("events", settings.rate_limit_events),
        Limit("actions", settings.rate_limit_actions),
    ], bucket)


async def _try_migrate(airwave: Airwave, delay: float) -> bool:
    try:
        await migrate(airwave.db)
    except DatabaseUnavailable as exc:
        log.error("database unreachable, not ready; retrying in %.0fs: %s", delay, exc)
        return False
    airwave.migrated.set()
    return True


async def _migrate_until_done(airwave: Airwave) -> None:
    delay = 1.0
    while True:
        await asyncio.sleep(delay)
        if await _try_migrate(airwave, min(delay * 2, 15.0)):
            log.info("database reachable again, schema migrated: ready")
            return
        delay = min(delay * 2, 15.0)


async def _start(app: web.Application) -> None:
    """A reachable database is migrated before we serve; an unreachable one does not
    stop the server: it answers, says it is not ready, and keeps trying."""
    airwave = app[AIRWAVE]
    await airwave.bus.start()
    if not await _try_migrate(airwave, 1.0):
        airwave.spawn(_migrate_until_done(airwave), "migrate")
    if app[SERVE_STUN]:
        airwave.stun = await StunServer.start_embedded(airwave.settings)


async def _shutdown(app: web.Application) -> None:
    """Runs first at shutdown, while connections are still open: the node drains
    (features end what this node holds, e.g. calls as ``server_shutdown``), then
    its media sessions and sockets close."""
    airwave = app[AIRWAVE]
    airwave.draining = True
    await airwave.bus.publish("node", {"type": "draining", "nodeId": airwave.node_id}, local=True)
    await airwave.media.close()
    await airwave.signaling.close()


async def _cleanup(app: web.Application) -> None:
    airwave = app[AIRWAVE]
    await airwave.cancel_background()
    if airwave.stun is not None:
        await airwave.stun.close()
    await airwave.bus.close()
    if airwave.redis is not None:
        await airwave.redis.aclose()
    await airwave.db.close()
