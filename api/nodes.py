"""The live nodes and their load, ``GET /api/v1/nodes`` (admin). The
heartbeats themselves are cluster/'s (:class:`cluster.NodeRegistry`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from aiohttp import web

from api.auth_http import require_admin
from api.components import AIRWAVE, Airwave
from api.errors import json_response
from api.routing import ApiRoutes

log = logging.getLogger("airwave.nodes")

routes = ApiRoutes("nodes")

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


async def live_nodes(airwave: Airwave, started_at: float) -> list[dict[str, Any]]:
    return await airwave.cluster.nodes.live(lambda: describe(airwave, started_at, airwave.draining))


STARTED_KEY: web.AppKey[float] = web.AppKey("node_started_at", float)


@routes.get("/api/v1/nodes", summary="Live nodes and their load (admin)", response_schema=NODE_SCHEMA,
            responses={200: "the live nodes", 403: "not an admin"})
async def list_nodes(request: web.Request) -> web.Response:
    require_admin(request)
    airwave = request.app[AIRWAVE]
    return json_response({"nodes": await live_nodes(airwave, request.app[STARTED_KEY])})


def install(airwave: Airwave, app: web.Application) -> None:
    app[STARTED_KEY] = time.time()
    nodes = airwave.cluster.nodes

    async def start(app: web.Application) -> None:
        started_at = app[STARTED_KEY]
        airwave.spawn(nodes.run(lambda: describe(airwave, started_at, airwave.draining)), "node-heartbeat")

    async def stop(app: web.Application) -> None:
        await nodes.leave()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
