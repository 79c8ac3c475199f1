"""The node registry: which airwave processes are alive, and their load.

Each node writes a heartbeat every few seconds: with Redis, a hash
``airwave:node:<id>`` that expires when the node stops beating (so a node
killed with SIGKILL disappears on its own); without Redis, only this node
exists. ``GET /api/v1/nodes`` (admin) lists them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import Any

from aiohttp import web

from api.auth_http import require_admin
from api.components import AIRWAVE, Airwave
from api.errors import json_response
from api.routing import ApiRoutes

log = logging.getLogger("airwave.nodes")

routes = ApiRoutes("nodes")

HEARTBEAT_SECONDS = 2.0
NODE_TTL_SECONDS = 6

NODE_SCHEMA = {
    "type": "object",
    "properties": {
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "pid": {"type": "integer"},
                    "startedAt": {"type": "number"},
                    "seenAt": {"type": "number"},
                    "publishers": {"type": "integer"},
                    "subscribers": {"type": "integer"},
                    "sockets": {"type": "integer"},
                    "rooms": {"type": "integer"},
                    "draining": {"type": "boolean"},
                },
            },
        }
    },
}


def node_key(airwave: Airwave) -> str:
    return f"{airwave.settings.redis_prefix}:node:{airwave.node_id}"


def node_id_for(settings_node_id: str, port: int) -> str:
    return settings_node_id or f"{socket.gethostname()}:{port}:{os.getpid()}"


def describe(airwave: Airwave, started_at: float, draining: bool) -> dict[str, Any]:
    rooms = airwave.media.rooms()
    return {
        "id": airwave.node_id,
        "pid": os.getpid(),
        "startedAt": started_at,
        "seenAt": time.time(),
        "publishers": sum(r.publishers for r in rooms.values()),
        "subscribers": sum(r.subscribers for r in rooms.values()),
        "sockets": len(airwave.signaling.identities),
        "rooms": len(rooms),
        "draining": draining,
    }


async def _heartbeat(airwave: Airwave, started_at: float) -> None:
    assert airwave.redis is not None
    key = node_key(airwave)
    while True:
        try:
            await airwave.redis.set(
                key, json.dumps(describe(airwave, started_at, airwave.draining)), ex=NODE_TTL_SECONDS
            )
        except Exception as exc:  # Redis down: keep beating, readiness reports it
            log.warning("node heartbeat failed: %s", exc)
        await asyncio.sleep(HEARTBEAT_SECONDS)


async def live_nodes(airwave: Airwave, started_at: float) -> list[dict[str, Any]]:
    if airwave.redis is None:
        return [describe(airwave, started_at, airwave.draining)]
    nodes = []
    async for key in airwave.redis.scan_iter(match=f"{airwave.settings.redis_prefix}:node:*", count=100):
        raw = await airwave.redis.get(key)
        if raw:
            nodes.append(json.loads(raw))
    return sorted(nodes, key=lambda n: n["id"])


STARTED_KEY: web.AppKey[float] = web.AppKey("node_started_at", float)


@routes.get("/api/v1/nodes", summary="Live nodes and their load (admin)", response_schema=NODE_SCHEMA,
            responses={200: "the live nodes", 403: "not an admin"})
async def list_nodes(request: web.Request) -> web.Response:
    require_admin(request)
    airwave = request.app[AIRWAVE]
    return json_response({"nodes": await live_nodes(airwave, request.app[STARTED_KEY])})


def install(airwave: Airwave, app: web.Application) -> None:
    app[STARTED_KEY] = time.time()

    async def start(app: web.Application) -> None:
        if airwave.redis is not None:
            airwave.spawn(_heartbeat(airwave, app[STARTED_KEY]), "node-heartbeat")

    async def stop(app: web.Application) -> None:
        if airwave.redis is not None:
            try:
                await airwave.redis.delete(node_key(airwave))
            except Exception:  # Redis may be gone at shutdown
                pass

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
