"""Media across nodes: each room's origin, edges that pull a room once, and
the call media proxy.

With Redis, a room's media lives on one node, its **origin**: the node where
its publisher is (``{prefix}:media:origin:{room}`` = ``{"node", "url"}``, set
when a publisher starts there and cleared when it ends). A WHEP viewer who
arrives at another node is served there: that node becomes an **edge** and
pulls the room once from the origin over a server-to-server WHEP session
(``POST {origin}/whep/{room}`` with a node token it mints itself: admin grant,
60 s, ``sub = node:<id>``), publishes what arrives into its own copy of the
room (RTP as it is, no decoding) and subscribes its viewers to that copy. The
origin pays one subscriber per edge. An edge drops its pull shortly after its
last viewer leaves; when the origin's publisher ends, the pull and the edge's
viewers end with it.

A call's media lives on the node of the first party that negotiates
(``{prefix}:call:media:{callId}``). The other party's ``call:sdp_offer``,
``call:sdp_answer`` and ``call:ice_candidate`` are forwarded by its own node
to that node (``POST /internal/v1/calls/{callId}/media``, node tokens only), so
each party's media goes straight to the media node; the media node's offers
reach the party's sockets on any node through Socket.IO's Redis manager.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from api.auth_http import require_identity
from api.bodies import parse_json
from api.components import AIRWAVE, Airwave
from api.errors import ApiError, json_response
from api.routing import ApiRoutes
from auth import Grants, Identity
from sfu import RoomNotLive, Session
from signaling.calls import CallSignaling

log = logging.getLogger("airwave.edge")

routes = ApiRoutes("internal")

NODE_TOKEN_TTL = 60.0
NODE_SUBJECT = "node:"
EDGE_LINGER_SECONDS = 1.0  # a pull outlives its last viewer this long (a viewer may be arriving)
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)
SDP = "application/sdp"
CALL_MEDIA_TTL = 24 * 3600


@dataclass(frozen=True)
class NodeAddress:
    node: str
    url: str


def internal_url(airwave: Airwave) -> str:
    settings = airwave.settings
    if settings.internal_url:
        return settings.internal_url.rstrip("/")
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def is_node(identity: Identity | None) -> bool:
    return identity is not None and identity.is_admin and identity.user_id.startswith(NODE_SUBJECT)


def require_node(request: web.Request) -> Identity:
    identity = require_identity(request)
    if not is_node(identity):
        raise ApiError(403, "forbidden", "internal routes take a node token only")
    return identity


class MediaRegistry:
    """Which node holds each room's media, in Redis."""

    def __init__(self, airwave: Airwave) -> None:
        assert airwave.redis is not None
        self.airwave = airwave
        self.redis = airwave.redis
        self.prefix = airwave.settings.redis_prefix
        self.me = NodeAddress(airwave.node_id, internal_url(airwave))

    def _origin_key(self, room: str) -> str:
        return f"{self.prefix}:media:origin:{room}"

    def _call_key(self, call_id: str) -> str:
        return f"{self.prefix}:call:media:{call_id}"

    def _encode(self) -> str:
        return json.dumps({"node": self.me.node, "url": self.me.url})

    async def _alive(self, raw: bytes | None) -> NodeAddress | None:
        if not raw:
            return None
        value = json.loads(raw)
        address = NodeAddress(str(value["node"]), str(value["url"]))
        if address.node != self.me.node and not await self.redis.exists(f"{self.prefix}:node:{address.node}"):
            return None  # that node is gone (killed): its media went with it
        return address

    async def claim_origin(self, room: str) -> None:
        await self.redis.set(self._origin_key(room), self._encode())

    async def release_origin(self, room: str) -> None:
        # only our own claim: a new publisher elsewhere may have taken the room over
        await self.redis.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1, self._origin_key(room), self._encode(),
        )

    async def origin_of(self, room: str) -> NodeAddress | None:
        return await self._alive(await self.redis.get(self._origin_key(room)))

    async def call_media_node(self, call_id: str) -> NodeAddress:
        """The call's media node; the first node to ask becomes it."""
        key = self._call_key(call_id)
        await self.redis.set(key, self._encode(), nx=True, ex=CALL_MEDIA_TTL)
        address = await self._alive(await self.redis.get(key))
        if address is None:  # its node died: this one takes the call's media over
            await self.redis.set(key, self._encode(), ex=CALL_MEDIA_TTL)
            return self.me
        return address

    async def forget_call(self, call_id: str) -> None:
        await self.redis.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1, self._call_key(call_id), self._encode(),
        )


class NodeClient:
    """HTTP to other nodes with a node token minted here."""

    def __init__(self, airwave: Airwave) -> None:
        self.airwave = airwave
        self._http: aiohttp.ClientSession | None = None

    def token(self) -> str:
        return self.airwave.tokens.mint(
            NODE_SUBJECT + self.airwave.node_id, grants=Grants(admin=True), ttl=NODE_TOKEN_TTL
        )

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        return self._http

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token()}"}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


@dataclass
class EdgePull:
    room: str
    origin: NodeAddress
    session: Session | None = None
    resource: str = ""  # the origin's WHEP session URL
    linger: asyncio.TimerHandle | None = None


class EdgeService:
    """Pulls rooms from their origins for this node's viewers."""

    def __init__(self, airwave: Airwave, registry: MediaRegistry, client: NodeClient) -> None:
        self.airwave = airwave
        self.engine = airwave.media
        self.registry = registry
        self.client = client
        self.pulls: dict[str, EdgePull] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure_copy(self, room: str) -> None:
        """Before a WHEP viewer subscribes here: when the room's origin is
        another node, make sure this node pulls it (once)."""
        if self.engine.has_publisher(room):
            pull = self.pulls.get(room)
            if pull is not None and pull.linger is not None:
                pull.linger.cancel()
                pull.linger = None
            return
        lock = self._locks.setdefault(room, asyncio.Lock())
        async with lock:
            if self.engine.has_publisher(room):
                return
            origin = await self.registry.origin_of(room)
            if origin is None or origin.node == self.registry.me.node:
                return  # not live anywhere: the engine answers 404
            await self._pull(room, origin)

    async def _pull(self, room: str, origin: NodeAddress) -> None:
        pull = EdgePull(room, origin)

        async def exchange(offer: str) -> str:
            url = f"{origin.url}/whep/{room}"
            try:
                async with self.client.http.post(url, data=offer.encode(), headers=self.client.headers(SDP)) as r:
                    body = await r.text()
                    if r.status == 404:
                        raise RoomNotLive(f"room {room!r} is not live on its origin")
                    if r.status != 201:
                        raise ApiError(502, "origin_refused", f"the origin answered {r.status}")
                    location = r.headers.get("Location", "")
                    pull.resource = origin.url + urlsplit(location).path if location else ""
                    return body
            except aiohttp.ClientError as exc:
                raise ApiError(502, "origin_unreachable", f"the room's origin is unreachable: {exc}") from None

        self.pulls[room] = pull
        try:
            pull.session = await self.engine.pull(room, exchange, owner=NODE_SUBJECT + origin.node)
        except BaseException:
            if self.pulls.get(room) is pull:
                del self.pulls[room]
            await self._delete_resource(pull)
            raise
        log.info("edge: pulling room %s from %s (session %s)", room, origin.node, pull.session.id)

    async def _delete_resource(self, pull: EdgePull) -> None:
        if not pull.resource:
            return
        resource, pull.resource = pull.resource, ""
        try:
            async with self.client.http.delete(resource, headers=self.client.headers()) as r:
                await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("edge: DELETE %s failed: %s", resource, exc)

    def session_closed(self, session: Session) -> None:
        """A local session ended: a pull's last viewer, or a pull itself."""
        pull = self.pulls.get(session.room)
        if pull is None:
            return
        if session is pull.session:
            del self.pulls[session.room]
            if pull.linger is not None:
                pull.linger.cancel()
            self.airwave.spawn(self._delete_resource(pull), f"edge-unpull-{session.room}")
            log.info("edge: pull of room %s ended (%s)", session.room, session.close_reason)
        elif session.role == "subscriber" and self.engine.subscriber_count(session.room) == 0:
            if pull.linger is None:
                loop = asyncio.get_running_loop()
                pull.linger = loop.call_later(EDGE_LINGER_SECONDS, self._linger_over, pull)

    def _linger_over(self, pull: EdgePull) -> None:
        pull.linger = None
        if self.pulls.get(pull.room) is pull and self.engine.subscriber_count(pull.room) == 0:
            if pull.session is not None:
                self.airwave.spawn(pull.session.close("no_viewers"), f"edge-close-{pull.room}")

    async def close(self) -> None:
        for pull in list(self.pulls.values()):
            await self._delete_resource(pull)


class CallMediaRouter:
    """Routes a call party's media requests to the call's media node."""

    def __init__(self, registry: MediaRegistry, client: NodeClient) -> None:
        self.registry = registry
        self.client = client

    async def media_node(self, call_id: str) -> str | None:
        """None when this node holds the call's media, else the node's URL."""
        address = await self.registry.call_media_node(call_id)
        return None if address.node == self.registry.me.node else address.url

    async def forward(self, url: str, call_id: str, user_id: str, request: dict[str, Any]) -> dict[str, Any]:
        body = {"userId": user_id, **request}
        try:
            async with self.client.http.post(
                f"{url}/internal/v1/calls/{call_id}/media", json=body, headers=self.client.headers()
            ) as r:
                reply = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return {"error": {"code": "media_node_unreachable", "message": f"the call's media node: {exc}"}}
        return reply if isinstance(reply, dict) else {"error": {"code": "bad_reply", "message": "media node"}}

    async def forget(self, call_id: str) -> None:
        await self.registry.forget_call(call_id)


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
    "/internal/v1/calls/{call_id}/media",
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
    signaling: CallSignaling = airwave.services["call_signaling"]
    reply = await signaling.local_media_request(request.match_info["call_id"], body["userId"], body)
    return json_response(reply)


# ------------------------------------------------------------------------ wiring

EDGE_SERVICE = "edge"


def edge_of(airwave: Airwave) -> EdgeService | None:
    return airwave.services.get(EDGE_SERVICE)


def install(airwave: Airwave, app: web.Application) -> None:
    if airwave.redis is None:
        return  # one node: every room's media is here
    registry = MediaRegistry(airwave)
    client = NodeClient(airwave)
    edge = EdgeService(airwave, registry, client)
    airwave.services[EDGE_SERVICE] = edge
    engine = airwave.media

    closed = engine.on_session_closed

    def session_closed(session: Session, reason: str) -> Any:
        edge.session_closed(session)
        return closed(session, reason) if closed is not None else None

    engine.on_session_closed = session_closed

    async def media_event(event: dict[str, Any]) -> None:
        room = str(event.get("roomId") or "")
        if not room or "/" in room:  # call rooms have their own media node
            return
        session = engine.session(str(event.get("sessionId") or ""))
        try:
            if event.get("type") == "publisher_started":
                if session is None or not session.pulled:
                    await registry.claim_origin(room)
            elif event.get("type") == "publisher_ended":
                await registry.release_origin(room)
        except Exception as exc:  # Redis down: viewers elsewhere cannot find the room meanwhile
            log.warning("media registry: %s", exc)

    airwave.bus.subscribe("media", media_event)

    call_signaling: CallSignaling | None = airwave.services.get("call_signaling")
    if call_signaling is not None:
        call_signaling.remote_media = CallMediaRouter(registry, client)

    async def stop(app: web.Application) -> None:
        await edge.close()
        await client.close()

    app.on_cleanup.insert(0, stop)


__all__ = ["CallMediaRouter", "EdgeService", "MediaRegistry", "NodeAddress", "is_node", "require_node"]
