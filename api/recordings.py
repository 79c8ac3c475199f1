"""Recordings of live rooms: start and stop, the metadata, the files. See docs/recordings.md.

A room's owner or an admin starts a recording (``POST
/api/v1/rooms/{id}/recording``, Socket.IO ``recording:start``) and stops it
(``DELETE``, ``recording:stop``), or sets ``record: true`` on the room
(``PATCH /api/v1/rooms/{id}/recording``) to record every broadcast. The
recorder (recording/) runs on the room's origin node, the node whose media
engine has the publisher, as a local subscriber (``MediaEngine.subscribe_local``);
a request that reaches another node is handed to the origin over the bus
(channel ``recordings``). The audience hears ``stream:recording {roomId, on}``
and the room says ``recording: true``.

A recording ends with its broadcast: the publisher gone for longer than the
room's publisher grace (a publisher back within it continues the same file),
the room ended, or a stop. Node shutdown finishes the file and marks it
``interrupted``; a node that was killed marks its open recordings
``interrupted`` when it starts again (the files are written incrementally and
play as they are). A write that fails (full disk, quota) ends the recording
with ``failed_disk_full`` and leaves the broadcast alone.

Reading follows the live room's audience rules (``RoomRegistry.may_view``, as
``GET /api/v1/rooms/{id}``): metadata, and the file with HTTP range requests;
a node without the file (no shared directory) proxies to the node that wrote it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
from aiohttp import web

from api.auth_http import require_identity
from api.bodies import json_object
from api.components import AIRWAVE, Airwave, need
from api.errors import ApiError, json_response
from api.routing import ApiRoutes
from auth import ROOM_ID, Identity
from cluster import is_call_room
from cluster.nodes import internal_url
from recording import LocalDirectoryStorage, Recorder, RecordingResult
from recording.container import container_format
from rooms.rate_limit import InProcessTokenBucket
from rooms.rooms import RoomRecord, RoomRegistry
from sfu import LocalSubscriber, MediaError
from signaling import SignalError
from signaling import recordings as socket_recordings
from store.database import Row

log = logging.getLogger("airwave.recordings")

routes = ApiRoutes("recordings")
PROVIDES: tuple[str, ...] = ("recordings", "recording_changes", "recording_reads")
NEEDS: tuple[str, ...] = ("rooms",)

RECORDING_ID = re.compile(r"rec_[a-f0-9]{16}")
RECORDER_OWNER = "node:recorder"  # not a viewer: api/media.py counts no "node:" subscriber
CHANGES_PER_SECOND, CHANGES_BURST = 1.0, 5.0  # per user: start, stop, settings, delete
READS_PER_SECOND, READS_BURST = 20.0, 60.0  # per user: metadata and files
HANDOFF_WAIT = 5.0  # seconds a node waits for the origin to act on a request
RETENTION_SWEEP = 600.0
PAGE = 100
_PROXY_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
)


class Refused(ApiError):
    """A rule said no: HTTP status, code and message for either face (the HTTP
    error middleware answers it; the socket face turns it into an ack error)."""


class _Sink:
    """The local subscriber's sink until (and after) its recorder is made."""

    def __init__(self, service: RecordingService, room_id: str) -> None:
        self.service, self.room_id = service, room_id
        self.recorder: Recorder | None = None

    def on_rtp(self, kind: str, packet: bytes) -> None:
        if self.recorder is not None:
            self.recorder.on_rtp(kind, packet)

    def on_closed(self, reason: str) -> None:
        self.service.source_closed(self.room_id, self, reason)


@dataclass
class ActiveRecording:
    id: str
    room_id: str
    recorder: Recorder
    codecs: dict[str, str]
    sink: _Sink
    subscriber: LocalSubscriber | None
    waiting: asyncio.Task[None] | None = None  # the publisher left: its grace
    ending: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


def recording_json(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "roomId": row["room_id"],
        "streamId": row["stream_id"],
        "status": row["status"],
        "endReason": row["end_reason"],
        "container": row["container"],
        "codecs": {
            kind: codec
            for kind, codec in (("video", row["video_codec"]), ("audio", row["audio_codec"]))
            if codec
        },
        "startedBy": row["started_by"],
        "startedAt": row["started_at"],
        "endedAt": row["ended_at"],
        "duration": row["duration"],
        "size": row["size_bytes"],
        "error": row["error"],
        "fileUrl": f"/api/v1/recordings/{row['id']}/file",
    }


def probe(path: str) -> float:
    """Seconds from a recording's first to its last packet, read with PyAV (no decoding)."""
    first: float | None = None
    last = 0.0
    with av.open(path) as container:
        try:
            for packet in container.demux():
                if packet.pts is None or packet.time_base is None:
                    continue
                at = float(packet.pts * packet.time_base)
                first = at if first is None else min(first, at)
                last = max(last, at)
        except av.EOFError:
            pass  # a file cut short by a killed writer: what came before counts
    return round(last - first, 3) if first is not None else 0.0


class RecordingService:
    def __init__(self, airwave: Airwave) -> None:
        self.airwave = airwave
        self.db = airwave.db
        self.engine = airwave.media
        settings = airwave.settings
        self.storage = LocalDirectoryStorage(
            settings.effective_recordings_dir, settings.recordings_quota_bytes
        )
        self.node_url = internal_url(airwave.settings)
        self.active: dict[str, ActiveRecording] = {}  # room id ->

    @property
    def rooms(self) -> RoomRegistry:
        return need(self.airwave.services.rooms)

    # -- rules ----------------------------------------------------------------------------

    async def viewable_room(self, identity: Identity, room_id: str) -> RoomRecord:
        room = await self.rooms.get(room_id) if ROOM_ID.fullmatch(room_id) else None
        if room is None or not await self.rooms.may_view(room, identity):
            raise Refused(404, "room_not_found", f"no room {room_id[:140]!r}")
        return room

    async def moderated_room(self, identity: Identity, room_id: str) -> RoomRecord:
        room = await self.viewable_room(identity, room_id)
        if not room.may_moderate(identity):
            raise Refused(
                403, "forbidden", "only the room's owner or an admin manages its recordings"
            )
        if room.type != "live":
            raise Refused(400, "not_live_room", f"a {room.type} room is not recorded")
        return room

    async def viewable_recording(self, identity: Identity, recording_id: str) -> tuple[Row, RoomRecord]:
        row = None
        if RECORDING_ID.fullmatch(recording_id):
            row = await self.db.fetchrow("SELECT * FROM recordings WHERE id = $1", recording_id)
        if row is None:
            raise Refused(404, "recording_not_found", f"no recording {recording_id[:40]!r}")
        try:
            room = await self.viewable_room(identity, row["room_id"])
        except Refused:
            raise Refused(404, "recording_not_found", f"no recording {recording_id!r}") from None
        return row, room

    async def record_all(self, room_id: str) -> bool:
        value = await self.db.fetchval(
            "SELECT record_all FROM room_recording_settings WHERE room_id = $1", room_id
        )
        return bool(value)

    async def current(self, room_id: str) -> Row | None:
        return await self.db.fetchrow(
            "SELECT * FROM recordings WHERE room_id = $1 AND status = 'recording' "
            "ORDER BY started_at DESC LIMIT 1",
            room_id,
        )

    async def room_fields(self, room_id: str) -> dict[str, Any]:
        """What a room says about recording: ``recording`` (now) and ``record`` (always)."""
        current = await self.current(room_id)
        return {
            "recording": current is not None,
            "recordingId": current["id"] if current is not None else None,
            "record": await self.record_all(room_id),
        }

    # -- start and stop, from either face ---------------------------------------------------

    async def request_start(self, identity: Identity, room_id: str) -> dict[str, Any]:
        room = await self.moderated_room(identity, room_id)
        if await self.current(room.id) is not None:
            raise Refused(409, "already_recording", f"room {room.id!r} is being recorded")
        if room.status != "live":
            raise Refused(409, "room_not_live", f"room {room.id!r} is not live")
        if self._is_origin(room.id):
            return recording_json(await self.start(room.id, identity.user_id))
        if self.airwave.redis is None:
            raise Refused(409, "room_not_live", f"room {room.id!r} has no publisher")
        since = time.time()
        await self.airwave.bus.publish(
            "recordings", {"type": "start", "roomId": room.id, "userId": identity.user_id}
        )
        row = await self._await_row(
            room.id, lambda r: r is not None and r["started_at"] >= since - 1
        )
        if row is None:
            raise Refused(409, "room_not_live", f"no node has the publisher of room {room.id!r}")
        return recording_json(row)

    async def request_stop(self, identity: Identity, room_id: str) -> dict[str, Any]:
        room = await self.moderated_room(identity, room_id)
        row = await self.current(room.id)
        if row is None:
            raise Refused(404, "not_recording", f"room {room.id!r} is not being recorded")
        active = self.active.get(room.id)
        if active is not None:
            await self.finish(active, "complete", "stopped")
        else:
            await self.airwave.bus.publish("recordings", {"type": "stop", "roomId": room.id})
            await self._await_row(room.id, lambda r: r is None)
        ended = await self.db.fetchrow("SELECT * FROM recordings WHERE id = $1", row["id"])
        assert ended is not None
        return recording_json(ended)

    async def _await_row(self, room_id: str, done: Any) -> Row | None:
        deadline = time.monotonic() + HANDOFF_WAIT
        while True:
            row = await self.current(room_id)
            if done(row) or time.monotonic() > deadline:
                return row
            await asyncio.sleep(0.05)

    def _is_origin(self, room_id: str) -> bool:
        info = self.engine.rooms().get(room_id)
        return info is not None and info.publishers > 0 and not self.engine_is_edge(room_id)

    def engine_is_edge(self, room_id: str) -> bool:
        return room_id in self.airwave.cluster.edge.pulls  # rooms this node copies from their origin

    async def start(self, room_id: str, started_by: str | None) -> Row:
        """Record the room's publisher on this node (its origin)."""
        if room_id in self.active:
            raise Refused(409, "already_recording", f"room {room_id!r} is being recorded")
        sink = _Sink(self, room_id)
        try:
            subscriber = self.engine.subscribe_local(room_id, sink, owner=RECORDER_OWNER)
        except MediaError as exc:
            raise Refused(
                409, "room_not_live", f"room {room_id!r} cannot be recorded here: {exc}"
            ) from None
        if any(getattr(d.up.publisher, "pulled", False) for d in subscriber.downtracks):
            await subscriber.close("not_origin")
            raise Refused(409, "not_origin", f"room {room_id!r} is recorded on its origin node")
        codecs = {kind: c.mimeType.split("/")[1].lower() for kind, c in subscriber.codecs().items()}
        fmt, ext = container_format(codecs.get("video"))
        recording_id = "rec_" + secrets.token_hex(8)
        recorder = Recorder(
            self.storage,
            f"{recording_id}.{ext}",
            codecs,
            on_failed=lambda result: self._failed(room_id, result),
        )
        recorder.attach(subscriber)
        sink.recorder = recorder
        active = ActiveRecording(recording_id, room_id, recorder, codecs, sink, subscriber)
        self.active[room_id] = active
        stream_id = await self.db.fetchval("SELECT stream_id FROM rooms WHERE id = $1", room_id)
        await self.db.execute(
            "INSERT INTO recordings (id, room_id, stream_id, status, storage_key, container, "
            "video_codec, audio_codec, node_id, node_url, started_by, started_at) "
            "VALUES ($1, $2, $3, 'recording', $4, $5, $6, $7, $8, $9, $10, $11)",
            recording_id,
            room_id,
            stream_id,
            recorder.key,
            fmt,
            codecs.get("video"),
            codecs.get("audio"),
            self.airwave.node_id,
            self.node_url,
            started_by,
            time.time(),
        )
        log.info(
            "recording %s of room %s started by %s", recording_id, room_id, started_by or "setting"
        )
        await socket_recordings.announce_recording(
            self.airwave.signaling, room_id, True, recording_id
        )
        row = await self.db.fetchrow("SELECT * FROM recordings WHERE id = $1", recording_id)
        assert row is not None
        return row

    async def finish(self, active: ActiveRecording, status: str, reason: str) -> None:
        """Close the file, write the outcome, tell the audience. Idempotent."""
        if active.ending:
            await active.done.wait()
            return
        active.ending = True
        if self.active.get(active.room_id) is active:
            del self.active[active.room_id]
        if active.waiting is not None and active.waiting is not asyncio.current_task():
            active.waiting.cancel()
        if active.subscriber is not None and not active.subscriber.closed:
            active.sink.recorder = None
            await active.subscriber.close("recording_stopped")
        result = await active.recorder.stop(status)
        await self._write_result(active.id, result, reason)
        active.done.set()
        log.info(
            "recording %s of room %s: %s (%s)", active.id, active.room_id, result.status, reason
        )
        await socket_recordings.announce_recording(
            self.airwave.signaling, active.room_id, False, active.id
        )

    async def _write_result(self, recording_id: str, result: RecordingResult, reason: str) -> None:
        await self.db.execute(
            "UPDATE recordings SET status = $2, end_reason = $3, ended_at = $4, duration = $5, "
            "size_bytes = $6, error = $7 WHERE id = $1",
            recording_id,
            result.status,
            reason,
            time.time(),
            result.duration,
            result.size,
            result.error or None,
        )

    def _failed(self, room_id: str, result: RecordingResult) -> None:
        active = self.active.get(room_id)
        if active is not None:
            self.airwave.spawn(
                self.finish(active, result.status, "write_failed"), "recording failed"
            )

    # -- the broadcast's events ----------------------------------------------------------

    def source_closed(self, room_id: str, sink: _Sink, reason: str) -> None:
        active = self.active.get(room_id)
        if active is None or active.sink is not sink or active.ending:
            return
        active.subscriber = None
        grace = self.airwave.settings.room_publisher_grace
        if reason == "publisher_left" and grace > 0:
            active.waiting = self.airwave.spawn(self._grace(active, grace), "recording grace")
        elif reason == "shutdown":
            self.airwave.spawn(self.finish(active, "interrupted", "shutdown"), "recording end")
        else:
            self.airwave.spawn(self.finish(active, "complete", reason), "recording end")

    async def _grace(self, active: ActiveRecording, grace: float) -> None:
        await asyncio.sleep(grace)
        await self.finish(active, "complete", "publisher_left")

    async def on_media_event(self, event: dict[str, Any]) -> None:
        """Bus ``media`` (this node): a publisher started here."""
        if event.get("type") != "publisher_started":
            return
        room_id = str(event.get("roomId") or "")
        if is_call_room(room_id):  # a call's media is not recorded: no record_all to look up
            return
        active = self.active.get(room_id)
        if active is not None and active.subscriber is None and not active.ending:
            await self._resume(active)
        elif active is None and await self.record_all(room_id):
            room = await self.rooms.get(room_id)
            if room is not None and room.type == "live" and await self.current(room_id) is None:
                try:
                    await self.start(room_id, None)
                except Refused as exc:
                    log.warning("room %s not recorded: %s", room_id, exc.message)

    async def _resume(self, active: ActiveRecording) -> None:
        """The publisher came back within the grace: the same file goes on."""
        sink = _Sink(self, active.room_id)
        try:
            subscriber = self.engine.subscribe_local(active.room_id, sink, owner=RECORDER_OWNER)
        except MediaError:
            return
        codecs = {kind: c.mimeType.split("/")[1].lower() for kind, c in subscriber.codecs().items()}
        if codecs != active.codecs:  # another codec cannot go on in the same file
            await subscriber.close("recording_stopped")
            await self.finish(active, "complete", "codec_changed")
            if await self.record_all(active.room_id):
                await self.start(active.room_id, None)
            return
        if active.waiting is not None:
            active.waiting.cancel()
            active.waiting = None
        active.sink, active.subscriber = sink, subscriber
        active.recorder.attach(subscriber)
        sink.recorder = active.recorder
        log.info("recording %s of room %s resumed", active.id, active.room_id)

    async def on_room_event(self, event: dict[str, Any]) -> None:
        """Bus ``rooms``: a room that ended stops its recording here."""
        if event.get("type") == "room_ended":
            active = self.active.get(str(event.get("roomId") or ""))
            if active is not None:
                await self.finish(active, "complete", "room_ended")

    async def on_request(self, event: dict[str, Any]) -> None:
        """Bus ``recordings``, from any node: start or stop where the publisher is."""
        room_id = str(event.get("roomId") or "")
        if event.get("type") == "start" and room_id not in self.active and self._is_origin(room_id):
            try:
                await self.start(room_id, str(event.get("userId") or "") or None)
            except Refused as exc:
                log.warning("room %s not recorded: %s", room_id, exc.message)
        elif event.get("type") == "stop" and room_id in self.active:
            await self.finish(self.active[room_id], "complete", "stopped")

    # -- the node's life --------------------------------------------------------------------

    async def shutdown(self) -> None:
        await asyncio.gather(
            *(self.finish(a, "interrupted", "shutdown") for a in list(self.active.values()))
        )

    async def recover(self) -> int:
        """Recordings this node left open when it was killed: interrupted. This node
        is the same address, or the same node id: a worker of ``serve --workers``
        keeps its id (``<node>/<n>``) across restarts of the whole service, but
        not its internal port."""
        rows = await self.db.fetch(
            "SELECT * FROM recordings WHERE status = 'recording' AND (node_url = $1 OR node_id = $2)",
            self.node_url, self.airwave.node_id,
        )
        loop = asyncio.get_running_loop()
        for row in rows:
            if row["room_id"] in self.active:
                continue
            path = self.storage.local_path(row["storage_key"])
            duration = 0.0
            if path is not None:
                try:
                    duration = await loop.run_in_executor(None, probe, str(path))
                except (av.FFmpegError, OSError) as exc:
                    log.warning("recording %s cannot be read: %s", row["id"], exc)
            size = self.storage.size(row["storage_key"]) or 0
            await self._write_result(
                row["id"], RecordingResult("interrupted", size, duration), "node_restarted"
            )
            log.info(
                "recording %s left open by a killed node: interrupted (%.1f s)", row["id"], duration
            )
        return len(rows)

    async def sweep(self) -> int:
        """Delete finished recordings older than the retention."""
        days = self.airwave.settings.recordings_retention_days
        if days <= 0:
            return 0
        rows = await self.db.fetch(
            "SELECT id, storage_key FROM recordings WHERE status <> 'recording' "
            "AND COALESCE(ended_at, started_at) < $1",
            time.time() - days * 86400,
        )
        for row in rows:
            self.storage.delete(row["storage_key"])
            await self.db.execute("DELETE FROM recordings WHERE id = $1", row["id"])
        return len(rows)

    async def run_sweeper(self) -> None:
        await self.airwave.migrated.wait()
        await self.recover()
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("recordings retention sweep failed")
            await asyncio.sleep(RETENTION_SWEEP)

    async def delete(self, identity: Identity, recording_id: str) -> dict[str, Any]:
        row, room = await self.viewable_recording(identity, recording_id)
        if not room.may_moderate(identity):
            raise Refused(
                403, "forbidden", "only the room's owner or an admin deletes its recordings"
            )
        if row["status"] == "recording":
            raise Refused(409, "still_recording", "stop the recording before deleting it")
        self.storage.delete(row["storage_key"])
        await self.db.execute("DELETE FROM recordings WHERE id = $1", row["id"])
        log.info("recording %s deleted by %s", row["id"], identity.user_id)
        return {"id": row["id"], "deleted": True}


# ------------------------------------------------------------------------- routes


def _service(request: web.Request) -> RecordingService:
    return need(request.app[AIRWAVE].services.recordings)


async def _limited(request: web.Request, kind: str) -> Identity:
    identity = require_identity(request)
    services = request.app[AIRWAVE].services
    limiter = need(services.recording_changes if kind == "changes" else services.recording_reads)
    if not await limiter.allow(identity.user_id):
        raise ApiError(
            429, "rate_limited", "too many requests; wait a moment", headers={"Retry-After": "1"}
        )
    return identity


_RECORDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "roomId": {"type": "string"},
        "streamId": {"type": ["string", "null"]},
        "status": {
            "type": "string",
            "enum": ["recording", "complete", "interrupted", "failed_disk_full", "failed"],
        },
        "endReason": {"type": ["string", "null"]},
        "container": {"type": "string", "enum": ["webm", "mp4"]},
        "codecs": {"type": "object"},
        "startedBy": {"type": ["string", "null"]},
        "startedAt": {"type": "number"},
        "endedAt": {"type": ["number", "null"]},
        "duration": {"type": ["number", "null"]},
        "size": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
        "fileUrl": {"type": "string"},
    },
}


@routes.post(
    "/api/v1/rooms/{id}/recording",
    summary="Owner or admin: record the room's live broadcast (on its origin node)",
    responses={
        201: "the recording",
        400: "not a live room",
        403: "not the owner",
        404: "no such room",
        409: "already recording, or not live",
        429: "rate limited",
    },
    response_schema=_RECORDING_SCHEMA,
)
async def start_recording(request: web.Request) -> web.Response:
    identity = await _limited(request, "changes")
    body = await _service(request).request_start(identity, request.match_info["id"])
    return json_response(body, status=201)


@routes.delete(
    "/api/v1/rooms/{id}/recording",
    summary="Owner or admin: stop the room's recording (the file is finished)",
    responses={
        200: "the finished recording",
        403: "not the owner",
        404: "no such room or not recording",
        429: "rate limited",
    },
    response_schema=_RECORDING_SCHEMA,
)
async def stop_recording(request: web.Request) -> web.Response:
    identity = await _limited(request, "changes")
    body = await _service(request).request_stop(identity, request.match_info["id"])
    return json_response(body)


@routes.get(
    "/api/v1/rooms/{id}/recording",
    summary="Whether the room is being recorded now, and whether every broadcast is",
    responses={
        200: "{roomId, recording, recordingId, record}",
        404: "no such room",
        429: "rate limited",
    },
)
async def room_recording(request: web.Request) -> web.Response:
    identity = await _limited(request, "reads")
    service = _service(request)
    room = await service.viewable_room(identity, request.match_info["id"])
    return json_response({"roomId": room.id, **await service.room_fields(room.id)})


@routes.patch(
    "/api/v1/rooms/{id}/recording",
    summary="Owner or admin: {record: true} records every broadcast of the room",
    request={
        "application/json": {
            "type": "object",
            "required": ["record"],
            "properties": {"record": {"type": "boolean"}},
        }
    },
    responses={
        200: "{roomId, recording, recordingId, record}",
        400: "bad input",
        403: "not the owner",
        404: "no such room",
        429: "rate limited",
    },
)
async def set_record_all(request: web.Request) -> web.Response:
    identity = await _limited(request, "changes")
    record = (await json_object(request)).get("record")
    if not isinstance(record, bool):
        raise ApiError(400, "bad_record", "record must be true or false")
    service = _service(request)
    room = await service.moderated_room(identity, request.match_info["id"])
    await service.db.execute(
        "INSERT INTO room_recording_settings (room_id, record_all, updated_by, updated_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (room_id) DO UPDATE SET "
        "record_all = excluded.record_all, "
        "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        room.id,
        int(record),
        identity.user_id,
        time.time(),
    )
    return json_response({"roomId": room.id, **await service.room_fields(room.id)})


@routes.get(
    "/api/v1/rooms/{id}/recordings",
    summary="The room's recordings, newest first (the live room's audience may list them)",
    responses={200: "{recordings}", 404: "no such room (or not yours to see)", 429: "rate limited"},
    response_schema={
        "type": "object",
        "properties": {"recordings": {"type": "array", "items": _RECORDING_SCHEMA}},
    },
)
async def list_recordings(request: web.Request) -> web.Response:
    identity = await _limited(request, "reads")
    service = _service(request)
    room = await service.viewable_room(identity, request.match_info["id"])
    rows = await service.db.fetch(
        "SELECT * FROM recordings WHERE room_id = $1 ORDER BY started_at DESC LIMIT $2",
        room.id,
        PAGE,
    )
    return json_response({"recordings": [recording_json(r) for r in rows]})


@routes.get(
    "/api/v1/recordings/{id}",
    summary="One recording's metadata",
    responses={
        200: "the recording",
        404: "no such recording (or not yours to see)",
        429: "rate limited",
    },
    response_schema=_RECORDING_SCHEMA,
)
async def get_recording(request: web.Request) -> web.Response:
    identity = await _limited(request, "reads")
    row, _ = await _service(request).viewable_recording(identity, request.match_info["id"])
    return json_response(recording_json(row))


@routes.get(
    "/api/v1/recordings/{id}/file",
    summary="The recording's file (video/webm or video/mp4), with HTTP range requests",
    responses={
        200: "the file",
        206: "a range of it",
        404: "no such recording or file",
        416: "range not satisfiable",
        429: "rate limited",
    },
)
async def recording_file(request: web.Request) -> web.StreamResponse:
    identity = await _limited(request, "reads")
    service = _service(request)
    row, _ = await service.viewable_recording(identity, request.match_info["id"])
    path = service.storage.local_path(row["storage_key"])
    mime = "video/webm" if row["container"] == "webm" else "video/mp4"
    if path is not None:
        return web.FileResponse(path, headers={"Content-Type": mime, "Cache-Control": "private"})
    if row["node_url"] != service.node_url and not request.headers.get("X-Airwave-Proxied"):
        return await _proxy(request, row["node_url"])
    raise ApiError(404, "file_not_found", f"the file of recording {row['id']} is gone")


async def _proxy(request: web.Request, node_url: str) -> web.StreamResponse:
    """The node that wrote the file serves it; its answer is passed through."""
    headers = {
        k: v for k, v in request.headers.items() if k in ("Authorization", "Range", "If-Range")
    }
    headers["X-Airwave-Proxied"] = "1"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(node_url + request.rel_url.path, headers=headers) as upstream:
                response = web.StreamResponse(status=upstream.status)
                for name in _PROXY_HEADERS:
                    if name in upstream.headers:
                        response.headers[name] = upstream.headers[name]
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
    except aiohttp.ClientError as exc:
        raise ApiError(
            502, "node_unreachable", f"the node with the file is unreachable: {exc}"
        ) from None


@routes.delete(
    "/api/v1/recordings/{id}",
    summary="Owner or admin: delete a finished recording and its file",
    responses={
        200: "{id, deleted}",
        403: "not the owner",
        404: "no such recording",
        409: "still recording",
        429: "rate limited",
    },
)
async def delete_recording(request: web.Request) -> web.Response:
    identity = await _limited(request, "changes")
    body = await _service(request).delete(identity, request.match_info["id"])
    return json_response(body)


# ------------------------------------------------------------------------ wiring


def install(airwave: Airwave, app: web.Application) -> None:
    service = RecordingService(airwave)
    changes = InProcessTokenBucket(CHANGES_PER_SECOND, CHANGES_BURST)
    airwave.services.recordings = service
    airwave.services.recording_changes = changes
    airwave.services.recording_reads = InProcessTokenBucket(READS_PER_SECOND, READS_BURST)

    def socket_action(action: Any) -> socket_recordings.RecordingAction:
        async def act(identity: Identity, room_id: str) -> dict[str, Any]:
            try:
                return await action(identity, room_id)
            except Refused as exc:
                raise SignalError(exc.code, exc.message) from None

        return act

    socket_recordings.register(
        airwave.signaling,
        socket_action(service.request_start),
        socket_action(service.request_stop),
        changes,
    )
    airwave.bus.subscribe("media", service.on_media_event)
    airwave.bus.subscribe("rooms", service.on_room_event)
    airwave.bus.subscribe("recordings", service.on_request)

    async def start(app: web.Application) -> None:
        airwave.spawn(service.run_sweeper(), "recordings sweeper")

    async def shutdown(app: web.Application) -> None:
        await service.shutdown()  # before the media engine closes (api/app.py's hook runs after)

    app.on_startup.append(start)
    app.on_shutdown.append(shutdown)
