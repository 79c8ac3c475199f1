"""sfu/: WebRTC media sessions and forwarding of encoded media.

Publishers send into a room, subscribers receive the room's tracks; RTP is
forwarded as bytes (no decoding, no re-encoding). See docs/media.md.
"""

from .engine import SENDING, MediaEngine, RoomInfo, max_layer_value
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
from .sdp import MAX_SDP_LENGTH, Offer, parse_offer
from .session import Session

__all__ = [
    "AtCapacity",
    "IceRestartRefused",
    "LocalPublisher",
    "LocalSubscriber",
    "MAX_SDP_LENGTH",
    "MediaEngine",
    "MediaError",
    "NothingAcceptable",
    "Offer",
    "PublisherExists",
    "RestartTooSoon",
    "RoomInfo",
    "RoomNotLive",
    "RtpSink",
    "SENDING",
    "SdpError",
    "parse_offer",
    "Session",
    "SessionNotFound",
    "max_layer_value",
]
