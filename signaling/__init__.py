"""The Socket.IO face: auth on connect, events that call rooms/ and sfu/."""

from signaling.server import SignalError, Signaling, call_audience, room_audience, user_room

__all__ = ["Signaling", "SignalError", "call_audience", "room_audience", "user_room"]
