"""Prometheus metrics of the RTMP ingest (default registry, ``airwave_rtmp_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("airwave_rtmp_connections", "RTMP connections, publishing or not")
PUBLISHING = Gauge("airwave_rtmp_publishing", "RTMP connections feeding a room")
REFUSED = Counter("airwave_rtmp_refused", "RTMP publishes refused or ended by the server, by code",
                  ["code"])
KEYFRAME_REQUESTS = Counter(
    "airwave_rtmp_keyframe_requests_unanswered",
    "Viewers' keyframe requests an RTMP source could not be asked for",
)
