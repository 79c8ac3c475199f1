"""Errors raised by the media engine.

Each error has a stable ``code`` string and the HTTP ``status`` the faces
(api/, signaling/) answer with. sfu/ itself knows nothing of HTTP: the status
is a hint carried with the error so that every face maps it the same way.
"""

from __future__ import annotations


class MediaError(Exception):
    """Base class: every error the engine raises on bad input or state."""

    code: str = "media_error"
    status: int = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class SdpError(MediaError):
    """The offer (or answer, or candidate) is not SDP we can parse or use."""

    code = "bad_sdp"
    status = 400


class NothingAcceptable(MediaError):
    """The offer parses, but has no media section we can forward."""

    code = "no_acceptable_media"
    status = 422


class PublisherExists(MediaError):
    """The room already has a publisher."""

    code = "room_has_publisher"
    status = 409


class RoomNotLive(MediaError):
    """Subscribe to a room that has no publisher."""

    code = "room_not_live"
    status = 404


class AtCapacity(MediaError):
    """The room is full (max_subscribers_per_room) or the process is at max_sessions."""

    code = "at_capacity"
    status = 503


class IceRestartRefused(MediaError):
    """An ICE restart this session cannot do now: not connected yet, pulled
    from an origin, a renegotiation under way, or media sections changed."""

    code = "ice_restart_refused"
    status = 409


class RestartTooSoon(MediaError):
    """A second ICE restart within a second of the previous one."""

    code = "rate_limited"
    status = 429


class SessionNotFound(MediaError):
    """No session with this id (never existed, or already closed)."""

    code = "session_not_found"
    status = 404


__all__ = [
    "AtCapacity",
    "IceRestartRefused",
    "MediaError",
    "NothingAcceptable",
    "PublisherExists",
    "RestartTooSoon",
    "RoomNotLive",
    "SdpError",
    "SessionNotFound",
]
