"""RTMP ingest, the HTTP app's side: start the ingest server (ingest/) on
``AIRWAVE_RTMP_PORT``, decide who may publish, and the per-room stream keys.

A broadcaster's key is either a publish token (a JWT whose grant allows
publishing into the room, as for WHIP) or the room's stream key, which the
room's owner (or an admin) makes with ``POST /api/v1/rooms/{id}/stream-key``
(a new one replaces the old) and revokes with ``DELETE``. Only its SHA-256 is
stored. Making or revoking a key ends an RTMP publish that used the old one.

The ingest's publisher is an ordinary publisher of the media engine, so the
``publisher_started``/``publisher_ended`` announcements (api/media.py), room
rules and viewers need nothing more here.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from typing import Any

from aiohttp import web

from api.auth_http import require_identity
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError
from api.routing import ApiRoutes
from auth import ROOM_ID, Identity, TokenError
from ingest import PublishRequest, Refused, RtmpIngest
from rooms.rate_limit import InProcessTokenBucket

log = logging.getLogger("airwave.rtmp")

routes = ApiRoutes("rtmp")

# What install() builds and what it uses of earlier features (api.components.Services).
PROVIDES: tuple[str, ...] = ("rtmp_key_changes",)
NEEDS: tuple[str, ...] = ()

STREAM_KEY_PREFIX = "sk_"
KEY_CHANGES_PER_SECOND = 0.2  # per user: making and revoking stream keys
PUBLISH_ATTEMPTS_PER_SECOND = 1.0  # per broadcaster address, burst below
PUBLISH_ATTEMPT_BURST = 10.0
INGEST_KEY: web.AppKey[list[RtmpIngest]] = web.AppKey("rtmp_ingest", list)
_BAD_KEY = "NetStream.Publish.BadName"


def hash_stream_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_stream_key(key: str) -> bool:
    return key.startswith(STREAM_KEY_PREFIX)


class PublishAuthorizer:
    """The ingest's ``authorize``: a publish token or the room's stream key."""

    def __init__(self, airwave: Airwave) -> None:
        self.airwave = airwave
        self.attempts = InProcessTokenBucket(PUBLISH_ATTEMPTS_PER_SECOND, PUBLISH_ATTEMPT_BURST)

    async def __call__(self, request: PublishRequest) -> str:
        if self.airwave.draining:
            raise Refused("NetStream.Publish.Rejected", "the server is shutting down; retry")
        if not await self.attempts.allow(request.peer):
            raise Refused("NetStream.Publish.Rejected", "too many publish attempts; wait a moment")
        if is_stream_key(request.key):
            return await self._by_stream_key(request)
        try:
            identity = self.airwave.tokens.verify(request.key)
        except TokenError as exc:
            raise Refused(_BAD_KEY, f"the stream key or publish token is not valid: {exc.message}") from None
        if not identity.can_publish(request.room):
            raise Refused(_BAD_KEY, f"the token does not grant publish for room {request.room!r}")
        return identity.user_id

    async def _by_stream_key(self, request: PublishRequest) -> str:
        row = await self.airwave.db.fetchrow(
            "SELECT k.key_hash, r.owner_id FROM room_stream_keys k JOIN rooms r ON r.id = k.room_id "
            "WHERE k.room_id = $1 AND r.status <> 'ended'",
            request.room,
        )
        if row is None or not hmac.compare_digest(str(row["key_hash"]), hash_stream_key(request.key)):
            raise Refused(_BAD_KEY, f"the stream key is not valid for room {request.room!r}")
        return str(row["owner_id"] or "")


# ------------------------------------------------------------------------- routes


def _rate_limiter(request: web.Request) -> InProcessTokenBucket:
    return need(request.app[AIRWAVE].services.rtmp_key_changes)


async def _owned_live_room(request: web.Request, identity: Identity) -> Any:
    room_id = request.match_info["id"]
    registry = need(request.app[AIRWAVE].services.rooms)
    room = await registry.get(room_id) if ROOM_ID.fullmatch(room_id) else None
    if room is None or not await registry.may_view(room, identity):
        raise ApiError(404, "room_not_found", f"no room {room_id[:140]!r}")
    if not room.may_moderate(identity):
        raise ApiError(403, "forbidden", "only the room's owner or an admin manages its stream key")
    if room.type != "live":
        raise ApiError(400, "not_live_room", f"a {room.type} room has no stream key")
    if not await _rate_limiter(request).allow(identity.user_id):
        raise ApiError(429, "rate_limited", "too many stream key changes; wait a moment")
    return room


async def _end_key_publish(request: web.Request, room_id: str, why: str) -> None:
    for ingest in request.app[INGEST_KEY]:
        conn = ingest.publishing(room_id)
        if conn is not None and is_stream_key(conn.key):
            await conn.end(why)


def _rtmp_url(request: web.Request, room_id: str) -> str | None:
    port = request.app[AIRWAVE].settings.rtmp_port
    return f"rtmp://{request.url.host}:{port}/live/{room_id}" if port else None


_KEY_SCHEMA = {"type": "object", "properties": {
    "roomId": {"type": "string"}, "streamKey": {"type": "string"},
    "rtmpUrl": {"type": ["string", "null"]}, "createdAt": {"type": "number"}}}


@routes.post(
    "/api/v1/rooms/{id}/stream-key",
    summary="Owner or admin: make the room's RTMP stream key (replaces and ends the old one)",
    responses={201: "{roomId, streamKey, rtmpUrl, createdAt}: the key is shown only now",
               400: "not a live room", 403: "not the owner", 404: "no such room", 429: "rate limited"},
    response_schema=_KEY_SCHEMA,
)
async def make_stream_key(request: web.Request) -> web.Response:
    identity = require_identity(request)
    room = await _owned_live_room(request, identity)
    key = STREAM_KEY_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    await request.app[AIRWAVE].db.execute(
        "INSERT INTO room_stream_keys (room_id, key_hash, created_by, created_at) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (room_id) DO UPDATE SET key_hash = excluded.key_hash, "
        "created_by = excluded.created_by, created_at = excluded.created_at",
        room.id, hash_stream_key(key), identity.user_id, now,
    )
    await _end_key_publish(request, room.id, "the stream key was replaced")
    log.info("stream key of room %s made by %s", room.id, identity.user_id)
    return web.json_response(
        {"roomId": room.id, "streamKey": key, "rtmpUrl": _rtmp_url(request, room.id), "createdAt": now},
        status=201,
    )


@routes.delete(
    "/api/v1/rooms/{id}/stream-key",
    summary="Owner or admin: revoke the room's RTMP stream key (ends a publish that uses it)",
    responses={200: "{roomId, revoked}", 403: "not the owner", 404: "no such room or no key",
               429: "rate limited"},
)
async def revoke_stream_key(request: web.Request) -> web.Response:
    identity = require_identity(request)
    room = await _owned_live_room(request, identity)
    deleted = await request.app[AIRWAVE].db.execute(
        "DELETE FROM room_stream_keys WHERE room_id = $1", room.id
    )
    if not deleted:
        raise ApiError(404, "stream_key_not_found", f"room {room.id!r} has no stream key")
    await _end_key_publish(request, room.id, "the stream key was revoked")
    log.info("stream key of room %s revoked by %s", room.id, identity.user_id)
    return web.json_response({"roomId": room.id, "revoked": True})


# ------------------------------------------------------------------------ wiring


def install(airwave: Airwave, app: web.Application) -> None:
    """Start the ingest with the app when ``AIRWAVE_RTMP_PORT`` is set."""
    airwave.services.rtmp_key_changes = InProcessTokenBucket(KEY_CHANGES_PER_SECOND, 5.0)
    running: list[RtmpIngest] = []
    app[INGEST_KEY] = running
    port = airwave.settings.rtmp_port
    if not port:
        return

    async def start(app: web.Application) -> None:
        ingest = RtmpIngest(airwave.media, PublishAuthorizer(airwave))
        try:
            await ingest.start(airwave.settings.host, port)
        except OSError as exc:
            log.error("RTMP ingest cannot listen on TCP %s: %s", port, exc)
            return
        running.append(ingest)
        log.info("RTMP ingest on rtmp://%s:%s/live/ROOM", airwave.settings.host, port)

    async def stop(app: web.Application) -> None:
        for ingest in running:
            await ingest.close()
        running.clear()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
