"""ingest/: media that arrives by other protocols than WebRTC, turned into a
room's publisher. Now RTMP (``server.py``): the chunk stream and AMF0
commands (``chunks.py``, ``amf0.py``), H.264 from FLV to RTP (``avc.py``),
AAC to Opus (``aac.py``). See docs/rtmp.md.

It knows the media engine (``MediaEngine.publish_local``) and nothing of
HTTP, Socket.IO, the database or rooms' rules: who may publish is decided by
the ``authorize`` callback the HTTP app gives it (api/rtmp.py).
"""

from .server import IngestStats, PublishRequest, Refused, RtmpIngest, parse_stream

__all__ = ["IngestStats", "PublishRequest", "Refused", "RtmpIngest", "parse_stream"]
