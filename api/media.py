"""WHIP (RFC 9725) at /whip/{room} and WHEP at /whep/{room}, and the media events.

POST an SDP offer, get ``201 Created`` with the answer, a ``Location`` for the
session (an unguessable id), a strong ``ETag`` and ``Link`` headers for the
ICE servers. ``PATCH`` the session with ``application/trickle-ice-sdpfrag``
to trickle candidates, or with new ICE credentials to restart ICE (RFC 9725
section 4.4.1: ``200`` with the server's new credentials and candidates and a
new ``ETag``; the session, its tracks and its DTLS association stay);
``DELETE`` ends it.

A session created with a token is PATCHed and DELETEd with that same token
(accepted after its ``exp``, so a long OBS stream can still end cleanly) or a
valid token of its owner or an admin; an anonymous WHEP viewer's session URL is
its capability alone (128 random bits, as RFC 9725 section 4.3 allows).

Media events go on the bus, channel ``media``, for rooms/ to keep its rules:
``publisher_started``, ``publisher_ended``, ``subscriber_joined``,
``subscriber_left`` with ``roomId``, ``sessionId``, ``userId`` (and ``reason``).
Room rules come back on channel ``rooms``: ``room_ended`` closes the room's
media, ``viewer_kicked`` closes that user's sessions in the room.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from api.auth_http import bearer_token, require_identity
from api.components import AIRWAVE, Airwave
from api.errors import ApiError, refused
from api.ice import request_host
from api.limits import RETRY_AFTER_SECONDS as QUOTA_RETRY_AFTER
from api.limits import MediaQuota, SessionLimitExceeded, client_address
from api.routing import ApiRoutes
from auth import ROOM_ID_PATTERN, Identity
from cluster import is_node_subject
from rooms.rooms import RoomError
from sfu import MAX_SDP_LENGTH, MediaError, Session, SessionNotFound, max_layer_value
from sfu.sdp import write_ice_fragment
from sfu.track import DownTrack
from signaling import SignalError
from signaling import media as socket_media

log = logging.getLogger("airwave.media")

routes = ApiRoutes("media")

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
SESSION_ID = r"[a-f0-9]{32}"
RETRY_AFTER_SECONDS = "5"
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match, X-Request-Id",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Post, Accept-Patch, X-Request-Id",
    "Access-Control-Max-Age": "600",
}

def media_error(exc: MediaError) -> ApiError:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if exc.status == 503 else None
    return ApiError(exc.status, exc.code, str(exc), headers=headers)


@dataclass
class SessionRecord:
    """What the HTTP face remembers of a WHIP/WHEP session."""

    session: Session
    kind: str  # "whip" or "whep"
    user_id: str
    etag: str
    remote_ufrag: str
    token_id: str = ""  # the jti of the POST's token: revoking it ends the session
    token_hash: str = ""  # sha256 of the POST's bearer token; "" for an anonymous WHEP viewer


SESSIONS_KEY: web.AppKey[dict[str, SessionRecord]] = web.AppKey("whip_sessions", dict)
QUOTA_KEY: web.AppKey[MediaQuota] = web.AppKey("media_quota", MediaQuota)


# ------------------------------------------------------------------------ helpers


def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    """Allow the request's origin when it is one of AIRWAVE_CORS_ORIGINS."""
    origins = request.app[AIRWAVE].settings.cors_origins
    origin = request.headers.get("Origin")
    if not origin:
        return
    if "*" in origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Expose-Headers"] = CORS_HEADERS["Access-Control-Expose-Headers"]


async def _read_sdp(request: web.Request, content_type: str) -> str:
    if request.content_type != content_type:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be {content_type}, got {request.content_type or 'none'}",
            headers={"Accept-Post": SDP} if content_type == SDP else {"Accept-Patch": SDPFRAG},
        )
    if request.content_length is not None and request.content_length > MAX_SDP_LENGTH:
        raise ApiError(413, "payload_too_large", f"SDP larger than {MAX_SDP_LENGTH} bytes")
    # the whole body: one read() returns what has arrived so far, and on a real network an
    # offer's later TCP segments may come a round trip after the first (a loss, a reorder)
    body = bytearray()
    while chunk := await request.content.read(MAX_SDP_LENGTH + 1 - len(body)):
        body += chunk
        if len(body) > MAX_SDP_LENGTH:
            raise ApiError(413, "payload_too_large", f"SDP larger than {MAX_SDP_LENGTH} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_sdp", "SDP must be UTF-8 text") from None


def _ufrag(sdp: str) -> str:
    match = re.search(r"^a=ice-ufrag:(\S+)", sdp, flags=re.M)
    return match.group(1) if match else ""


def _attribute(fragment: str, pattern: str) -> str:
    match = re.search(pattern, fragment, flags=re.M)
    return match.group(1) if match else ""


def _etag(session: Session, ufrag: str) -> str:
    return '"' + hashlib.sha256(f"{session.id}:{ufrag}".encode()).hexdigest()[:32] + '"'


def _session_url(request: web.Request, kind: str, room: str, session_id: str) -> str:
    path = f"/{kind}/{room}/{session_id}"
    public = request.app[AIRWAVE].settings.public_url.rstrip("/")
    return public + path if public else path


async def _room_is_public(airwave: Airwave, room: str) -> bool:
    value = await airwave.db.fetchval("SELECT public FROM rooms WHERE id = $1", room)
    return bool(value)


async def room_door(airwave: Airwave, identity: Identity | None, room_id: str, role: str) -> None:
    """The room's own rules at a media door, after the token's grant; RoomError when not.

    A viewer (``role`` "subscribe") must be in the room's audience (rooms/rooms.py
    ``audience_refusal``); a room the registry does not know (yet) has no rules
    beyond the grant. A publisher must be the room's owner, an admin, or hold a
    token naming this very room; an unknown room id is published into (and so
    created, owned by the publisher) only with such a token: a wildcard publish
    grant cannot take a room id nobody created."""
    registry = airwave.services.rooms
    if registry is None:
        return
    room = await registry.get(room_id)
    if role == "subscribe":
        refusal = await registry.audience_refusal(room, identity) if room is not None else None
        if refusal is not None:
            raise refusal
        return
    assert identity is not None  # publishing always takes a token
    if identity.is_admin or identity.grants.room == room_id:
        return
    if room is None:
        raise RoomError(
            "not_found", "room_not_found",
            f"no room {room_id!r}: create it first (POST /api/v1/rooms) or use a token naming it",
        )
    if room.owner_id != identity.user_id:
        raise RoomError("forbidden", "not_owner", "only the room's owner publishes into it")


async def _authorize(request: web.Request, kind: str, room: str) -> Identity | None:
    airwave = request.app[AIRWAVE]
    identity: Identity | None = None
    if kind == "whep" and bearer_token(request) is None and airwave.settings.whep_public:
        if not await _room_is_public(airwave, room):
            require_identity(request)  # 401: this room is not open to anonymous viewers
    else:
        identity = require_identity(request)
        allowed = identity.can_publish(room) if kind == "whip" else identity.can_subscribe(room)
        if not allowed:
            grant = "publish" if kind == "whip" else "subscribe"
            raise ApiError(403, "forbidden", f"the token does not grant {grant} for room {room!r}")
    try:
        await room_door(airwave, identity, room, "publish" if kind == "whip" else "subscribe")
    except RoomError as exc:
        raise refused(exc) from None
    return identity


async def local_copy(airwave: Airwave, room: str) -> None:
    """Before a viewer subscribes here: when the room's origin is another node,
    this node pulls it once (cluster/edge.py)."""
    await airwave.cluster.edge.ensure_copy(room)


async def announce(airwave: Airwave, event: str, session: Session, **extra: Any) -> None:
    # Only this node holds the session: its handlers turn it into shared state.
    await airwave.bus.publish(
        "media",
        {"type": event, "roomId": session.room, "sessionId": session.id, "userId": session.owner, **extra},
        local=True,
    )


# ------------------------------------------------------------------------- routes


async def _create(request: web.Request, kind: str) -> web.Response:
    airwave = request.app[AIRWAVE]
    room = request.match_info["room"]
    identity = await _authorize(request, kind, room)
    max_layer = None
    if kind == "whep" and "maxLayer" in request.query:
        try:
            max_layer = max_layer_value(request.query["maxLayer"])
        except ValueError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
    offer = await _read_sdp(request, SDP)
    owner = identity.user_id if identity else ""
    quota = request.app[QUOTA_KEY]
    # Admins (and so edge nodes pulling a room) are not held to the per-user limits.
    exempt = identity is not None and identity.is_admin
    address = "" if exempt else client_address(request, airwave.settings)
    try:
        with quota.reserve("" if exempt else owner, address):
            if kind == "whip":
                session = await airwave.media.publish(room, offer, owner=owner)
            else:
                await local_copy(airwave, room)
                session = await airwave.media.subscribe(room, offer, owner=owner)
                if max_layer is not None:
                    airwave.media.set_max_layer(session.id, max_layer)
    except SessionLimitExceeded as exc:
        raise ApiError(429, exc.code, exc.message, headers={"Retry-After": str(QUOTA_RETRY_AFTER)}) from None
    except MediaError as exc:
        raise media_error(exc) from None
    quota.opened(session.id, "" if exempt else owner, address)
    token = bearer_token(request)
    record = SessionRecord(
        session, kind, owner, _etag(session, _ufrag(offer)), _ufrag(offer),
        identity.token_id if identity else "", _token_hash(token) if token else "",
    )
    request.app[SESSIONS_KEY][session.id] = record
    if kind == "whep" and not is_node_subject(owner):
        await announce(airwave, "subscriber_joined", session)
    response = web.Response(
        status=201, body=session.answer_sdp.encode(), headers={"Content-Type": SDP}
    )
    response.headers["Location"] = _session_url(request, kind, room, session.id)
    response.headers["ETag"] = record.etag
    response.headers["Accept-Patch"] = SDPFRAG
    try:
        links = airwave.ice.link_headers(owner or session.id, request_host(request))
    except ValueError:  # a hostile Host header: no STUN link rather than an error
        links = airwave.ice.link_headers(owner or session.id, None)
    for link in links:
        response.headers.add("Link", link)
    _add_cors(request, response)
    log.info("%s session %s in room %s for %s", kind, session.id, room, owner or "anonymous")
    return response


def _record(request: web.Request, kind: str) -> SessionRecord:
    record = request.app[SESSIONS_KEY].get(request.match_info["session"])
    if record is None or record.kind != kind or record.session.room != request.match_info["room"]:
        raise ApiError(404, "session_not_found", "no such session")
    token = bearer_token(request)
    if record.token_hash and token is None:
        raise ApiError(
            401, "missing_token", "this session was created with a token: send it (or a fresh one of yours)",
            headers={"WWW-Authenticate": 'Bearer realm="airwave"'},
        )
    if token is not None and _token_hash(token) != record.token_hash:
        # Not the POST's token (which still works after its exp): a valid one of the owner or an admin.
        identity = require_identity(request)
        if identity.user_id != record.user_id and not identity.is_admin:
            raise ApiError(403, "forbidden", "this session belongs to someone else")
    return record


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _patch(request: web.Request, kind: str) -> web.Response:
    record = _record(request, kind)
    if_match = request.headers.get("If-Match")
    if if_match is not None and if_match != "*" and if_match != record.etag:
        raise ApiError(412, "precondition_failed", "If-Match does not match the session's ETag")
    fragment = await _read_sdp(request, SDPFRAG)
    ufrag = _ufrag(fragment)
    lines = [line.strip() for line in fragment.splitlines()]
    candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
    if ufrag and ufrag != record.remote_ufrag:
        return await _restart(request, record, if_match, ufrag, fragment, candidates)
    airwave = request.app[AIRWAVE]
    try:
        for candidate in candidates:
            await airwave.media.add_remote_candidate(record.session.id, candidate)
        if "a=end-of-candidates" in lines:
            await airwave.media.add_remote_candidate(record.session.id, "")
    except MediaError as exc:
        raise media_error(exc) from None
    response = web.Response(status=204)
    response.headers["ETag"] = record.etag
    _add_cors(request, response)
    return response


async def _restart(
    request: web.Request,
    record: SessionRecord,
    if_match: str | None,
    ufrag: str,
    fragment: str,
    candidates: list[str],
) -> web.Response:
    """ICE restart (RFC 9725 section 4.4.1): new credentials in, ours out."""
    if if_match is None:
        raise ApiError(428, "precondition_required", "an ICE restart needs If-Match: \"*\"")
    pwd = _attribute(fragment, r"^a=ice-pwd:(\S+)")
    if not pwd:
        raise ApiError(400, "bad_sdp", "an ICE restart needs a=ice-ufrag and a=ice-pwd")
    if re.search(r"^a=end-of-candidates\s*$", fragment, flags=re.M):
        candidates = [*candidates, "end-of-candidates"]
    session = record.session
    try:
        parameters, ours = await request.app[AIRWAVE].media.restart_ice(
            session.id, ufrag, pwd, candidates
        )
    except MediaError as exc:
        error = media_error(exc)
        if exc.status == 429:
            error.headers["Retry-After"] = "1"
        raise error from None
    record.remote_ufrag = ufrag
    record.etag = _etag(session, ufrag)
    first = session.lines[0].media if session.lines else None
    body = write_ice_fragment(
        parameters,
        ours,
        kind=_attribute(fragment, r"^m=(\w+) ") or (first.kind if first else "audio"),
        mid=_attribute(fragment, r"^a=mid:(\S+)") or (first.mid if first else "0"),
    )
    response = web.Response(status=200, body=body.encode(), headers={"Content-Type": SDPFRAG})
    response.headers["ETag"] = record.etag
    _add_cors(request, response)
    log.info("%s session %s restarted ICE", record.kind, session.id)
    return response


async def _delete(request: web.Request, kind: str) -> web.Response:
    record = _record(request, kind)
    airwave = request.app[AIRWAVE]
    try:
        await airwave.media.close_session(record.session.id, "deleted")
    except SessionNotFound:
        pass  # it ended on its own a moment ago
    request.app[SESSIONS_KEY].pop(record.session.id, None)
    response = web.Response(status=200)
    _add_cors(request, response)
    return response


async def _options(request: web.Request) -> web.Response:
    response = web.Response(status=204)
    response.headers.update(CORS_HEADERS)
    response.headers["Accept-Post"] = SDP
    _add_cors(request, response)
    airwave = request.app[AIRWAVE]
    if bearer_token(request) is not None:
        identity = require_identity(request)
        for link in airwave.ice.link_headers(identity.user_id, request_host(request)):
            response.headers.add("Link", link)
    return response


_CREATE_RESPONSES = {
    201: "created: the answer SDP, Location, ETag, Link",
    400: "malformed SDP",
    403: "the token lacks the grant",
    409: "the room already has a publisher",
    413: "SDP over 64 KiB",
    415: "wrong content type",
    422: "nothing in the offer can be forwarded",
    503: "at capacity (Retry-After)",
}
_SDP_BODY = {SDP: {"type": "string"}}
_FRAG_BODY = {SDPFRAG: {"type": "string"}}


@routes.post(f"/whip/{{room:{ROOM_ID_PATTERN}}}", summary="WHIP: publish into a room", request=_SDP_BODY,
             responses=_CREATE_RESPONSES)
async def whip_create(request: web.Request) -> web.Response:
    return await _create(request, "whip")


@routes.post(f"/whep/{{room:{ROOM_ID_PATTERN}}}", summary="WHEP: watch a room", request=_SDP_BODY,
             responses={**_CREATE_RESPONSES, 404: "the room has no publisher"})
async def whep_create(request: web.Request) -> web.Response:
    return await _create(request, "whep")


_PATCH_RESPONSES = {
    200: "ICE restarted: the server's new credentials and candidates, a new ETag",
    204: "candidates added",
    400: "malformed fragment or candidate",
    401: "an ICE restart without the owner's token",
    403: "another user's token",
    404: "no such session",
    409: "the session cannot restart ICE now (not connected yet)",
    412: "If-Match does not match",
    415: "wrong content type",
    428: "an ICE restart without If-Match",
    429: "a second ICE restart within a second",
}


@routes.patch(f"/whip/{{room:{ROOM_ID_PATTERN}}}/{{session:{SESSION_ID}}}", summary="WHIP: trickle ICE or restart ICE",
              auth=False, request=_FRAG_BODY, responses=_PATCH_RESPONSES)
async def whip_patch(request: web.Request) -> web.Response:
    return await _patch(request, "whip")


@routes.patch(f"/whep/{{room:{ROOM_ID_PATTERN}}}/{{session:{SESSION_ID}}}", summary="WHEP: trickle ICE or restart ICE",
              auth=False, request=_FRAG_BODY, responses=_PATCH_RESPONSES)
async def whep_patch(request: web.Request) -> web.Response:
    return await _patch(request, "whep")


@routes.delete(f"/whip/{{room:{ROOM_ID_PATTERN}}}/{{session:{SESSION_ID}}}", summary="WHIP: stop publishing",
               auth=False, responses={200: "ended", 404: "no such session"})
async def whip_delete(request: web.Request) -> web.Response:
    return await _delete(request, "whip")


@routes.delete(f"/whep/{{room:{ROOM_ID_PATTERN}}}/{{session:{SESSION_ID}}}", summary="WHEP: stop watching",
               auth=False, responses={200: "ended", 404: "no such session"})
async def whep_delete(request: web.Request) -> web.Response:
    return await _delete(request, "whep")


for _path in (f"/whip/{{room:{ROOM_ID_PATTERN}}}", f"/whep/{{room:{ROOM_ID_PATTERN}}}",
              f"/whip/{{room:{ROOM_ID_PATTERN}}}/{{session:{SESSION_ID}}}",
              f"/whep/{{room:{ROOM_ID_PATTERN}}}/{{session:{SESSION_ID}}}"):
    routes.options(_path, summary="CORS preflight; Accept-Post and ICE servers", auth=False,
                   responses={204: "allowed methods and headers"})(_options)


# ------------------------------------------------------------------------ wiring


def install(airwave: Airwave, app: web.Application) -> None:
    """Media events onto the bus; room rules back onto the media engine."""
    sessions: dict[str, SessionRecord] = {}
    app[SESSIONS_KEY] = sessions
    engine = airwave.media
    quota = app[QUOTA_KEY] = MediaQuota(engine, airwave.settings)

    async def announce_session(event: str, session: Session) -> None:
        await announce(airwave, event, session)

    async def prepare_subscribe(room: str) -> None:
        await airwave.cluster.edge.ensure_copy(room)  # a ClusterError is the socket face's to answer

    async def admit(identity: Identity, room: str, role: str) -> None:
        try:
            await room_door(airwave, identity, room, role)
            if not identity.is_admin:
                quota.check(identity.user_id, "")
        except SessionLimitExceeded as exc:
            raise SignalError(exc.code, exc.message) from None

    socket_sessions = socket_media.register(
        airwave.signaling, engine, airwave.bus, announce_session, prepare_subscribe, admit
    )

    async def publisher_started(room: str, session: Session) -> None:
        await announce(airwave, "publisher_started", session)

    async def publisher_ended(room: str, session: Session, reason: str) -> None:
        await announce(airwave, "publisher_ended", session, reason=reason)

    async def session_closed(session: Session, reason: str) -> None:
        sessions.pop(session.id, None)
        quota.closed(session.id)
        socket_sessions.forget(session.id)
        if session.role == "subscriber" and not is_node_subject(session.owner):
            await announce(airwave, "subscriber_left", session, reason=reason)

    async def layer_changed(session: Session, down: DownTrack) -> None:
        if session.owner and not is_node_subject(session.owner):  # not an edge's pull
            await socket_media.layer_changed(airwave.signaling, session, down)

    airwave.engine_events.publisher_started.append(publisher_started)
    airwave.engine_events.publisher_ended.append(publisher_ended)
    airwave.engine_events.session_closed.append(session_closed)
    airwave.engine_events.layer_changed.append(layer_changed)

    async def room_rules(event: dict[str, Any]) -> None:
        room = event.get("roomId", "")
        if event.get("type") == "room_ended":
            await engine.close_room(room, "room_ended")
        elif event.get("type") == "viewer_kicked":
            for record in list(sessions.values()):
                s = record.session
                if s.room == room and s.owner == event.get("userId"):
                    try:
                        await engine.close_session(s.id, "kicked")
                    except SessionNotFound:
                        pass

    airwave.bus.subscribe("rooms", room_rules)
