"""GET /api/v1/ice-servers: STUN and TURN (with fresh credentials) for RTCPeerConnection."""

from __future__ import annotations

from aiohttp import web

from api.auth_http import require_identity
from api.components import AIRWAVE, Airwave
from api.errors import json_response
from api.routing import ApiRoutes

routes = ApiRoutes("ice")

ICE_SERVERS_SCHEMA = {
    "type": "object",
    "properties": {
        "iceServers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "urls": {"type": "array", "items": {"type": "string"}},
                    "username": {"type": "string"},
                    "credential": {"type": "string"},
                },
                "required": ["urls"],
            },
        },
        "ttl": {"type": "integer"},
    },
}


def request_host(request: web.Request) -> str:
    """The host name the client used to reach us, for STUN URLs."""
    host = request.url.host or ""
    return host.strip("[]")


def ice_servers_for(airwave: Airwave, user_id: str, request: web.Request) -> list[dict]:
    return airwave.ice.ice_servers(user_id, request_host(request))


@routes.get(
    "/api/v1/ice-servers",
    summary="ICE servers (STUN, TURN with short-lived credentials) in RTCPeerConnection's shape",
    response_schema=ICE_SERVERS_SCHEMA,
)
async def get_ice_servers(request: web.Request) -> web.Response:
    identity = require_identity(request)
    airwave = request.app[AIRWAVE]
    return json_response(
        {"iceServers": ice_servers_for(airwave, identity.user_id, request), "ttl": airwave.ice.ttl}
    )
