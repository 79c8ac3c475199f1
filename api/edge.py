"""The internal HTTP route of the cluster: a call party's media request,
forwarded by the party's node to the call's media node (node tokens only).
Media across nodes itself is cluster/ (docs/media-cluster.md); this module
only wires it to the engine and the socket face.
"""

from __future__ import annotations

import logging

from aiohttp import web

from api.auth_http import require_identity
from api.bodies import parse_json
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError, json_response
from api.routing import ApiRoutes
from auth import Identity
from cluster import is_node_subject
from cluster.calls import INTERNAL_CALL_MEDIA
from sfu import Session

log = logging.getLogger("airwave.edge")

routes = ApiRoutes("internal")

# What install() builds and what it uses of earlier features (api.components.Services).
PROVIDES: tuple[str, ...] = ()
NEEDS: tuple[str, ...] = ("call_signaling",)


def is_node(identity: Identity | None) -> bool:
    return identity is not None and identity.is_admin and is_node_subject(identity.user_id)


def require_node(request: web.Request) -> Identity:
    identity = require_identity(request)
    if not is_node(identity):
        raise ApiError(403, "forbidden", "internal routes take a node token only")
    return identity


# ------------------------------------------------------------------------- routes

CALL_MEDIA_REQUEST = {
    "application/json": {
        "type": "object",
        "required": ["userId", "kind"],
        "properties": {
            "userId": {"type": "string"},
            "kind": {"type": "string", "enum": ["offer", "answer", "candidate"]},
            "sdp": {"type": "string"},
            "candidate": {"type": "string"},
        },
    }
}


@routes.post(
    INTERNAL_CALL_MEDIA,
    summary="Internal (node tokens only): a call party's offer, answer or candidate, forwarded "
    "by the party's node to the call's media node",
    request=CALL_MEDIA_REQUEST,
    responses={200: "the ack the party gets (an object, or {error})", 400: "bad request",
               403: "not a node token"},
)
async def call_media(request: web.Request) -> web.Response:
    require_node(request)
    airwave = request.app[AIRWAVE]
    try:
        body = parse_json(await request.read())
    except ValueError:
        raise ApiError(400, "bad_request", "JSON body expected") from None
    if not isinstance(body, dict) or not isinstance(body.get("userId"), str):
        raise ApiError(400, "bad_request", "'userId' is required")
    reply = await airwave.cluster.calls.serve(request.match_info["call_id"], body["userId"], body)
    return json_response(reply)


# ------------------------------------------------------------------------ wiring


def install(airwave: Airwave, app: web.Application) -> None:
    cluster = airwave.cluster

    def session_closed(session: Session, reason: str) -> None:
        cluster.edge.session_closed(session)

    airwave.engine_events.session_closed.append(session_closed)
    cluster.track_origins(airwave.bus, airwave.media)
    cluster.calls.serve_with(need(airwave.services.call_signaling))

    async def stop(app: web.Application) -> None:
        await cluster.close()

    app.on_cleanup.insert(0, stop)


__all__ = ["is_node", "require_node"]
