"""``gift:send`` over Socket.IO, and ``gift:received`` to the room or call.

``gift:send {giftId, to, roomId|callId, quantity, idempotencyKey}`` is acked
with the same result as ``POST /api/v1/gifts/send``; a refusal acks
``{"error": {"code", "message"}}`` with the same codes.
"""

from __future__ import annotations

from typing import Any

from auth import Identity
from gifts.gifts import GiftSent, GiftService, SendGift
from signaling.server import Signaling, call_audience, room_audience


async def announce_gift(signaling: Signaling, sent: GiftSent) -> None:
    """Tell everyone in the room (or both parties of the call) once, never on a replay."""
    if sent.replayed:
        return
    audience = room_audience(sent.room_id) if sent.room_id is not None else call_audience(sent.call_id or "")
    await signaling.sio.emit("gift:received", sent.received_event(), room=audience)


def register(signaling: Signaling, gifts: GiftService) -> None:
    @signaling.on("gift:send")
    async def gift_send(sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        sent = await gifts.send(identity, SendGift.parse(data))
        await announce_gift(signaling, sent)
        return sent.as_json()
