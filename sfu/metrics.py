"""Prometheus metrics of the media engine (default registry, ``airwave_sfu_*``).

Per-packet counts are kept in plain ints by the forwarding code and added to
the counters in batches (see ``UpTrack.flush_metrics``), never per packet.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PUBLISHERS = Gauge("airwave_sfu_publishers", "Publishing sessions")
SUBSCRIBERS = Gauge("airwave_sfu_subscribers", "Subscribing sessions")
SESSIONS = Gauge("airwave_sfu_sessions", "Media sessions of any kind")
ROOMS = Gauge("airwave_sfu_rooms", "Rooms with at least one session")
PACKETS_RECEIVED = Counter("airwave_sfu_received_packets", "RTP packets received from publishers")
PACKETS_FORWARDED = Counter("airwave_sfu_forwarded_packets", "RTP packets sent to subscribers")
BYTES_FORWARDED = Counter(
    "airwave_sfu_forwarded_bytes", "RTP bytes (before SRTP) sent to subscribers"
)
RETRANSMITTED = Counter(
    "airwave_sfu_retransmitted_packets", "RTP packets resent on a subscriber's NACK"
)
RTX_SENT = Counter(
    "airwave_sfu_rtx_sent_packets",
    "Of the retransmitted packets, those sent as RTX (RFC 4588) in the subscriber's RTX stream",
)
RESENDS_SKIPPED = Counter(
    "airwave_sfu_resends_skipped_packets",
    "Packets a subscriber NACKed and was not sent again: resent less than a round trip ago, or"
    " past the repair budget (the rate of the media repaired)",
)
RTX_REPAIRED = Counter(
    "airwave_sfu_rtx_repaired_packets",
    "Packets lost from a publisher and received again in its RTX stream",
)
NACKS_SENT = Counter("airwave_sfu_nacks_sent", "NACK messages sent to publishers")
KEYFRAME_REQUESTS = Counter(
    "airwave_sfu_keyframe_requests_relayed", "PLI sent to publishers on behalf of subscribers"
)
LAYER_SWITCHES = Counter(
    "airwave_sfu_layer_switches",
    "Simulcast layer changes of subscriber tracks (pauses and resumes included)",
)
PAUSED_VIEWERS = Gauge(
    "airwave_sfu_paused_viewers", "Subscriber video tracks paused: not even the lowest layer fits"
)
GOP_REPLAYS = Counter(
    "airwave_sfu_gop_replays",
    "New viewers started from a layer's cached keyframe, by result: started, caught_up (then"
    " live), fell_back (the history moved on: they wait for a keyframe)",
    ["result"],
)
GOP_STALE = Counter(
    "airwave_sfu_gop_stale_joins",
    "New viewers that found the layer's cached keyframe too old (or none) and waited for a new one",
)
SESSIONS_ENDED = Counter("airwave_sfu_sessions_ended", "Sessions ended, by reason", ["reason"])
SESSIONS_FAILED = Counter(
    "airwave_sfu_sessions_failed", "Sessions ended by a failure, by reason", ["reason"]
)
ICE_RESTARTS = Counter(
    "airwave_sfu_ice_restarts", "ICE restarts by result: completed, or failed (the old path stays)",
    ["result"],
)

FAILURE_REASONS = frozenset({"ice_failed", "dtls_failed", "connect_timeout", "setup_failed"})
