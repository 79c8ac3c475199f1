"""sfu/: WebRTC media sessions and forwarding of encoded media.

Publishers send into a room, subscribers receive the room's tracks; RTP is
forwarded as bytes (no decoding, no re-encoding). See docs/media.md.
"""

from .engine import MediaEngine, RoomInfo, max_layer_value
from .errors import (
    AtCapacity,
    IceRestartRefused,
    MediaError,
    NothingAcceptable,
    PublisherExists,
    RestartTooSoon,
    RoomNotLive,
    SdpError,
    SessionNotFound,
)
from .local import LocalPublisher
from .recording_sink import LocalSubscriber, RtpSink
from .session import Session

__all__ = [
    "AtCapacity",
    "IceRestartRefused",
    "LocalPublisher",
    "LocalSubscriber",
    "MediaEngine",
    "MediaError",
    "NothingAcceptable",
    "PublisherExists",
    "RestartTooSoon",
    "RoomInfo",
    "RoomNotLive",
    "RtpSink",
    "SdpError",
    "Session",
    "SessionNotFound",
    "max_layer_value",
]
