"""Admin figures: the state of the whole deployment in one answer, the same as
Prometheus gauges, and the ledger's reconciliation."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from prometheus_client import Gauge

from api.components import Airwave, need
from api.nodes import STARTED_KEY, describe, live_nodes
from api.routing import ApiRoutes
from api.webhook_events import admin_request
from gifts.payouts import reconcile

log = logging.getLogger("airwave.admin")

routes = ApiRoutes("admin")

REFRESH_SECONDS = 15.0
WINDOWS = {"lastHour": 3600.0, "lastDay": 86400.0}

LIVE_ROOMS = Gauge("airwave_live_rooms", "Live rooms (the whole deployment)")
LIVE_VIEWERS = Gauge("airwave_live_viewers", "Viewers of live rooms (the whole deployment)")
CALLS_NOW = Gauge("airwave_calls_now", "Calls now, by status (the whole deployment)", ["status"])
SOCKETS = Gauge("airwave_sockets", "Connected Socket.IO clients (the whole deployment)")
NODES = Gauge("airwave_nodes", "Live nodes")
GIFTS_WINDOW = Gauge("airwave_gifts_window", "Gifts sent in the window", ["window"])
GIFT_COINS_WINDOW = Gauge("airwave_gift_coins_window", "Coins paid for gifts in the window", ["window"])
WEBHOOK_BACKLOG = Gauge("airwave_webhook_backlog", "Outgoing webhook deliveries pending (the outbox)")

STATS_SCHEMA = {
    "type": "object",
    "properties": {
        "rooms": {"type": "object", "properties": {"live": {"type": "integer"}, "viewers": {"type": "integer"}}},
        "calls": {"type": "object", "properties": {"active": {"type": "integer"}, "ringing": {"type": "integer"}}},
        "sockets": {"type": "integer"},
        "nodes": {"type": "integer"},
        "gifts": {
            "type": "object",
            "description": "lastHour and lastDay: {count, coins}",
            "additionalProperties": {
                "type": "object",
                "properties": {"count": {"type": "integer"}, "coins": {"type": "integer"}},
            },
        },
        "webhooks": {
            "type": "object",
            "properties": {"queued": {"type": "integer"}, "failed": {"type": "integer"},
                           "oldestAgeSeconds": {"type": "number"}},
        },
        "at": {"type": "number"},
    },
}
RECONCILIATION_SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "checkedAt": {"type": "number"},
        "invariants": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "ok": {"type": "boolean"},
                    "offending": {"type": "array", "description": "the rows that break it (at most 100)"},
                    "values": {"type": "object"},
                },
            },
        },
    },
}


async def collect_stats(airwave: Airwave, started_at: float) -> dict[str, Any]:
    db = airwave.db
    now = time.time()
    live = await db.fetch("SELECT id FROM rooms WHERE type = 'live' AND status = 'live'")
    registry = airwave.services.rooms
    viewers = 0
    if registry is not None:
        for room in live:
            viewers += await registry.viewers.count(room["id"])
    calls = {r["status"]: int(r["n"]) for r in await db.fetch(
        "SELECT status, COUNT(*) AS n FROM calls WHERE status IN ('ringing', 'active') GROUP BY status"
    )}
    gifts = {}
    for name, seconds in WINDOWS.items():
        row = await db.fetchrow(
            "SELECT COUNT(*) AS n, COALESCE(SUM(coins), 0) AS coins FROM gifts_sent WHERE created_at > $1",
            now - seconds,
        )
        assert row is not None
        gifts[name] = {"count": int(row["n"]), "coins": int(row["coins"])}
    # This node's own figures fresh; the others' from their last heartbeat.
    here = describe(airwave, started_at, airwave.draining)
    nodes = [n for n in await live_nodes(airwave, started_at) if n.get("id") != here["id"]] + [here]
    return {
        "rooms": {"live": len(live), "viewers": viewers},
        "calls": {"active": calls.get("active", 0), "ringing": calls.get("ringing", 0)},
        "sockets": sum(int(n.get("sockets", 0)) for n in nodes),
        "nodes": len(nodes),
        "gifts": gifts,
        "webhooks": await need(airwave.services.outbox).backlog(),
        "at": now,
    }


def export(stats: dict[str, Any]) -> None:
    LIVE_ROOMS.set(stats["rooms"]["live"])
    LIVE_VIEWERS.set(stats["rooms"]["viewers"])
    for status in ("active", "ringing"):
        CALLS_NOW.labels(status).set(stats["calls"][status])
    SOCKETS.set(stats["sockets"])
    NODES.set(stats["nodes"])
    for window, figures in stats["gifts"].items():
        GIFTS_WINDOW.labels(window).set(figures["count"])
        GIFT_COINS_WINDOW.labels(window).set(figures["coins"])
    WEBHOOK_BACKLOG.set(stats["webhooks"]["queued"])


@routes.get(
    "/api/v1/admin/stats",
    summary="Live rooms, viewers, calls, sockets, nodes, gifts in the last hour and day, webhook backlog (admin)",
    responses={200: "the figures", 401: "no or bad token", 403: "not an admin", 429: "rate limited"},
    response_schema=STATS_SCHEMA,
)
async def admin_stats(request: web.Request) -> web.Response:
    airwave, _ = await admin_request(request)
    stats = await collect_stats(airwave, request.app[STARTED_KEY])
    export(stats)
    return web.json_response(stats)


@routes.get(
    "/api/v1/admin/ledger/reconciliation",
    summary="The ledger's invariants and any row that breaks them (admin)",
    responses={200: "checked: ok is false when a row breaks an invariant", 401: "no or bad token",
               403: "not an admin", 429: "rate limited"},
    response_schema=RECONCILIATION_SCHEMA,
)
async def reconciliation(request: web.Request) -> web.Response:
    airwave, _ = await admin_request(request)
    return web.json_response(await reconcile(airwave.db))


async def _refresh(airwave: Airwave, started_at: float, stop: asyncio.Event) -> None:
    """Every ``REFRESH_SECONDS`` until ``stop``; a round in progress is finished, never cut
    (cancelling one in the middle of its Redis and database calls could hang the shutdown)."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), REFRESH_SECONDS)
            return
        except TimeoutError:
            pass
        if not airwave.migrated.is_set():
            continue
        try:
            export(await collect_stats(airwave, started_at))
        except Exception as exc:  # a database away for a moment: the next round tries again
            log.warning("admin figures not refreshed: %s", exc)


def install(airwave: Airwave, app: web.Application) -> None:
    stop = asyncio.Event()
    running: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        running.append(airwave.spawn(_refresh(airwave, app[STARTED_KEY], stop), "admin-figures"))

    async def finish(app: web.Application) -> None:
        stop.set()
        await asyncio.wait(running, timeout=5)

    app.on_startup.append(start)
    app.on_shutdown.append(finish)
