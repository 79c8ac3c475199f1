"""Socket.IO events of recordings: the owner (or an admin) starts and stops one.

Client to server, acknowledged (failures ``{"error": {code, message}}``):

- ``recording:start {roomId}`` ack the recording ``{id, roomId, status, ...}``
- ``recording:stop {roomId}`` ack the finished recording

Server to client, to the room's audience (``stream:join``):
``stream:recording {roomId, on, recordingId}``. The rules live with the
recording service (api/recordings.py); this module only speaks Socket.IO.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from auth import Identity
from rooms.rate_limit import RateLimiter
from signaling.server import SignalError, Signaling, room_audience

RecordingAction = Callable[[Identity, str], Awaitable[dict[str, Any]]]


def _room_id(data: Any) -> str:
    room_id = data.get("roomId") if isinstance(data, dict) else None
    if not isinstance(room_id, str) or not room_id or len(room_id) > 128:
        raise SignalError("bad_request", "roomId must be a room id")
    return room_id


def register(
    signaling: Signaling, start: RecordingAction, stop: RecordingAction, limiter: RateLimiter
) -> None:
    """``start``/``stop`` raise :class:`SignalError` when a rule says no."""

    async def limited(identity: Identity) -> None:
        if not await limiter.allow(identity.user_id):
            raise SignalError("rate_limited", "too many recording changes; wait a moment")

    @signaling.on("recording:start")
    async def recording_start(sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        room_id = _room_id(data)
        await limited(identity)
        return await start(identity, room_id)

    @signaling.on("recording:stop")
    async def recording_stop(sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        room_id = _room_id(data)
        await limited(identity)
        return await stop(identity, room_id)


async def announce_recording(
    signaling: Signaling, room_id: str, on: bool, recording_id: str
) -> None:
    """``stream:recording`` to the room's audience, on every node (through the manager)."""
    await signaling.sio.emit(
        "stream:recording",
        {"roomId": room_id, "on": on, "recordingId": recording_id},
        to=room_audience(room_id),
    )
