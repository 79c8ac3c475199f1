"""The RTMP ingest server: broadcasters push FLV over RTMP, the room gets an
ordinary publisher.

``rtmp://host:port/live/{room}`` with the key as the stream name (OBS:
server ``rtmp://host:port/live/{room}``, stream key = the key), or
``rtmp://host:port/live/{room}?key={key}`` (FFmpeg). Who may publish is not
decided here: ``authorize`` (given by the HTTP app) accepts a request or
raises :class:`Refused`. Media flows through the engine's local publisher
(``MediaEngine.publish_local``): H.264 passes through as RTP, AAC is
transcoded to Opus.

Refusals are ``onStatus`` messages with level ``error`` and a description,
which FFmpeg logs as ``Server error: ...`` and OBS in its log, and the
connection closes. Refused: a bad key, a room with a publisher, H.264
profiles other than Baseline and Main, B-frames (a composition time offset),
any video codec but H.264 (HEVC, AV1, VP9 over enhanced RTMP included), any
audio codec but AAC.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from auth import ROOM_ID
from sfu import LocalPublisher, MediaEngine, MediaError

from . import amf0, metrics
from .aac import AacToOpus, UnsupportedAudio, opus_codec
from .avc import AvcConfig, H264Packetizer, UnsupportedVideo, parse_avc_config, split_nal_units
from .chunks import (
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    OUR_CHUNK_SIZE,
    OUR_WINDOW,
    SET_PEER_BANDWIDTH,
    STREAM_BEGIN,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    ChunkWriter,
    ProtocolError,
    server_handshake,
)

log = logging.getLogger("airwave.rtmp")

APP = "live"
MAX_KEY = 4096
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0  # no message for this long ends the connection
MEDIA_TIMEOUT = 10.0  # the same once publishing (encoders send dozens of messages a second)
MAX_UNPUBLISHED = 64  # connections not (yet) publishing
REFUSAL_LINGER = 1.0  # seconds the client has to read a refusal before we close
STREAM_ID = 1
COMMAND_CSID, MEDIA_CSID = 3, 5
VIDEO_CODECS = {2: "Sorenson H.263", 3: "Screen video", 4: "On2 VP6", 5: "VP6 with alpha",
                6: "Screen video 2", 7: "H.264", 12: "HEVC"}
AUDIO_CODECS = {0: "PCM", 1: "ADPCM", 2: "MP3", 3: "PCM", 4: "Nellymoser", 5: "Nellymoser",
                6: "Nellymoser", 7: "G.711 A-law", 8: "G.711 mu-law", 10: "AAC", 11: "Speex",
                14: "MP3 8 kHz"}


@dataclass(frozen=True)
class PublishRequest:
    room: str
    key: str
    peer: str  # the broadcaster's IP address


class Refused(Exception):
    """A publish the server will not take; ``description`` reaches the broadcaster."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


Authorize = Callable[[PublishRequest], Awaitable[str]]  # -> the publisher's user id


def parse_stream(app: str, name: str) -> tuple[str, str]:
    """(room, key) from the connect's app and the publish's stream name."""
    app = app.split("?", 1)[0].strip("/")
    name, _, query = name.partition("?")
    if app == APP:  # rtmp://host/live/{room}?key=...
        room = name
        values = parse_qs(query)
        key = (values.get("key") or values.get("token") or [""])[0]
    elif app.startswith(APP + "/"):  # rtmp://host/live/{room}, stream key {key}
        room, key = app[len(APP) + 1 :], name
    else:
        raise Refused("NetConnection.Connect.Rejected", f"unknown application {app!r}: use /{APP}/ROOM")
    if not ROOM_ID.fullmatch(room):
        raise Refused("NetStream.Publish.BadName", f"bad room id {room[:140]!r}")
    if not key or len(key) > MAX_KEY:
        raise Refused("NetStream.Publish.BadName", "a stream key or publish token is required")
    return room, key


@dataclass
class IngestStats:
    video_frames: int = 0
    audio_frames: int = 0
    opus_packets: int = 0
    keyframe_requests: int = 0  # from viewers; RTMP cannot ask the encoder for one
    bytes_in: int = 0


@dataclass
class _Media:
    """What the stream has announced so far, and its converters."""

    avc: AvcConfig | None = None
    video: H264Packetizer | None = None
    audio: AacToOpus | None = None
    stats: IngestStats = field(default_factory=IngestStats)


class RtmpIngest:
    """Accepts RTMP publishers and feeds the media engine."""

    def __init__(self, engine: MediaEngine, authorize: Authorize) -> None:
        self.engine = engine
        self.authorize = authorize
        self.connections: set[RtmpConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def publishing(self, room: str) -> RtmpConnection | None:
        for conn in self.connections:
            if conn.room == room and conn.publisher is not None:
                return conn
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        if sum(1 for c in self.connections if c.publisher is None) >= MAX_UNPUBLISHED:
            writer.close()
            return
        conn = RtmpConnection(self, reader, writer, str(peer[0]))
        self.connections.add(conn)
        metrics.CONNECTIONS.inc()
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            metrics.CONNECTIONS.dec()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(c.end("server shutting down") for c in list(self.connections)))
        if self._server is not None:
            await self._server.wait_closed()


class RtmpConnection:
    """One broadcaster's TCP connection: commands, then FLV audio and video."""

    def __init__(self, ingest: RtmpIngest, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str) -> None:
        self.ingest = ingest
        self.peer = peer
        self.room = ""
        self.key = ""
        self.owner = ""
        self.publisher: LocalPublisher | None = None
        self.media = _Media()
        self._reader = reader
        self._writer = writer
        self._out = ChunkWriter(writer)
        self._in = ChunkReader(reader, self._out)
        self._app = ""
        self._publishing = False
        self._done = False
        self._watch: asyncio.Task[None] | None = None

    # -- the connection -----------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await server_handshake(self._reader, self._writer)
            while True:  # until the peer or _finish closes the connection
                async with asyncio.timeout(MEDIA_TIMEOUT if self._publishing else IDLE_TIMEOUT):
                    message = await self._in.read_message()
                self.media.stats.bytes_in = self._in.bytes_read
                await self._dispatch(message.type, message.timestamp, message.payload)
        except Refused as exc:
            await self._refuse(exc)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except (ProtocolError, amf0.AmfError) as exc:
            log.info("rtmp %s: protocol error: %s", self.peer, exc)
        except Exception:
            log.exception("rtmp %s: connection failed", self.peer)
        finally:
            await self._finish("disconnected")

    async def end(self, description: str) -> None:
        """Tell the broadcaster why and close (the server stops, the room ended)."""
        if not self._done:
            await self._refuse(Refused("NetStream.Publish.Rejected", description))

    async def _refuse(self, exc: Refused) -> None:
        self._done = True
        metrics.REFUSED.labels(code=exc.code).inc()
        log.warning("rtmp %s room %s refused: %s (%s)", self.peer, self.room or "?",
                    exc.description, exc.code)
        try:
            if exc.code.startswith("NetConnection."):
                self._command("_error", 1, None, {"level": "error", "code": exc.code,
                                                   "description": exc.description})
            else:
                self._status("error", exc.code, exc.description)
            await self._out.drain()
            await asyncio.sleep(REFUSAL_LINGER)
        except ConnectionError:
            pass
        await self._finish("refused")

    async def _finish(self, reason: str) -> None:
        self._done = True
        await self._stop_publishing(reason)
        self._writer.close()

    async def _stop_publishing(self, reason: str) -> None:
        self._publishing = False
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            metrics.PUBLISHING.dec()
            await publisher.close(reason)
            log.info("rtmp %s: stopped publishing into %s (%s)", self.peer, self.room, reason)

    # -- commands ---------------------------------------------------------------------------

    def _command(self, name: str, txn: float, *values: Any, stream_id: int = 0) -> None:
        self._out.write(COMMAND_CSID, COMMAND_AMF0, stream_id, amf0.encode(name, txn, *values))

    def _status(self, level: str, code: str, description: str) -> None:
        info = {"level": level, "code": code, "description": description}
        self._command("onStatus", 0, None, info, stream_id=STREAM_ID)

    async def _dispatch(self, type_: int, timestamp: int, payload: bytes) -> None:
        if self._done:
            return  # refused: read on while the broadcaster gets to read why
        if type_ == VIDEO:
            if self._publishing:
                await self._video(timestamp, payload)
        elif type_ == AUDIO:
            if self._publishing:
                self._audio(timestamp, payload)
        elif type_ in (COMMAND_AMF0, COMMAND_AMF3):
            body = payload[1:] if type_ == COMMAND_AMF3 else payload
            values = amf0.decode_all(body)
            if len(values) >= 2 and isinstance(values[0], str):
                txn = values[1] if isinstance(values[1], float) else 0.0
                await self._on_command(values[0], txn, values[2:])

    async def _on_command(self, name: str, txn: float, args: list[Any]) -> None:
        if name == "connect":
            command = args[0] if args and isinstance(args[0], dict) else {}
            self._app = str(command.get("app", ""))[:MAX_KEY]
            if self._app.split("?", 1)[0].strip("/").split("/")[0] != APP:
                raise Refused("NetConnection.Connect.Rejected",
                              f"unknown application {self._app!r}: use /{APP}/ROOM")
            self._out.control(WINDOW_ACK_SIZE, struct.pack("!I", OUR_WINDOW))
            self._out.control(SET_PEER_BANDWIDTH, struct.pack("!IB", OUR_WINDOW, 2))
            self._out.set_chunk_size(OUR_CHUNK_SIZE)
            self._command("_result", txn, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                          {"level": "status", "code": "NetConnection.Connect.Success",
                           "description": "Connection succeeded.", "objectEncoding": 0})
        elif name == "createStream":
            self._command("_result", txn, None, STREAM_ID)
        elif name in ("releaseStream", "FCPublish"):
            if txn:
                self._command("_result", txn, None)
        elif name == "publish":
            stream = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            await self._on_publish(stream)
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            await self._stop_publishing("deleted")
        await self._out.drain()

    async def _on_publish(self, stream: str) -> None:
        if self._publishing:
            raise Refused("NetStream.Publish.BadName", "this connection already publishes")
        room, key = parse_stream(self._app, stream)
        self.room, self.key = room, key
        self.owner = await self.ingest.authorize(PublishRequest(room, key, self.peer))
        if self.ingest.engine.has_publisher(room):
            raise Refused("NetStream.Publish.BadName", f"room {room!r} already has a publisher")
        self._out.control(USER_CONTROL, struct.pack("!HI", STREAM_BEGIN, STREAM_ID))
        self._status("status", "NetStream.Publish.Start", f"publishing into room {room}")
        self._publishing = True
        log.info("rtmp %s: publish into room %s accepted for %s", self.peer, room, self.owner)

    # -- media --------------------------------------------------------------------------------

    async def _video(self, timestamp: int, payload: bytes) -> None:
        if len(payload) < 2:
            return
        head = payload[0]
        if head & 0x80:  # enhanced RTMP: a FourCC names the codec
            fourcc = payload[1:5].decode("latin-1", errors="replace")
            raise Refused("NetStream.Publish.Rejected",
                          f"video codec {fourcc!r} is refused: send H.264 (Baseline or Main profile)")
        codec, frame_type = head & 0x0F, head >> 4
        if codec != 7:
            raise Refused("NetStream.Publish.Rejected",
                          f"video codec {VIDEO_CODECS.get(codec, codec)} is refused: send H.264 "
                          "(Baseline or Main profile)")
        if frame_type == 5 or len(payload) < 5:
            return  # video info / command frame
        packet_type = payload[1]
        cto = int.from_bytes(payload[2:5], "big", signed=True)
        try:
            if packet_type == 0:
                self._configure(parse_avc_config(payload[5:]))
            elif packet_type == 1:
                if cto != 0:
                    raise UnsupportedVideo(
                        "H.264 with B-frames is refused: WebRTC has no frame reordering. Set "
                        "B-frames to 0 (OBS: x264 options bframes=0; FFmpeg: -bf 0)")
                await self._access_unit(timestamp, split_nal_units(payload[5:], self._length_size()))
        except UnsupportedVideo as exc:
            raise Refused("NetStream.Publish.Rejected", str(exc)) from None

    def _length_size(self) -> int:
        if self.media.avc is None:
            raise UnsupportedVideo("H.264 frames arrived before the sequence header")
        return self.media.avc.length_size

    def _configure(self, config: AvcConfig) -> None:
        old = self.media.avc
        if old is not None and self.publisher is not None and (
            config.profile_level_id != old.profile_level_id
        ):
            raise UnsupportedVideo("the H.264 profile or level changed while publishing: restart")
        self.media.avc = config
        if self.media.video is None:
            self.media.video = H264Packetizer(config)
        else:
            self.media.video.reconfigure(config)

    async def _access_unit(self, timestamp: int, units: list[bytes]) -> None:
        if self.publisher is None:
            await self._start_publisher()
        assert self.publisher is not None and self.media.video is not None
        self.media.stats.video_frames += 1
        for packet in self.media.video.packetize(units, timestamp):
            self.publisher.send("video", packet)

    async def _start_publisher(self) -> None:
        assert self.media.avc is not None
        tracks = [("video", self.media.avc.codec())]
        if self.media.audio is not None:
            tracks.append(("audio", opus_codec()))
        try:
            publisher = self.ingest.engine.publish_local(self.room, owner=self.owner, tracks=tracks)
        except MediaError as exc:
            raise Refused("NetStream.Publish.BadName", exc.message) from None
        publisher.on_keyframe_request = self._keyframe_requested
        self.publisher = publisher
        metrics.PUBLISHING.inc()
        self._watch = asyncio.create_task(self._watch_publisher(publisher))

    def _keyframe_requested(self, kind: str) -> None:
        self.media.stats.keyframe_requests += 1
        metrics.KEYFRAME_REQUESTS.inc()

    async def _watch_publisher(self, publisher: LocalPublisher) -> None:
        """The engine ended the publisher (room ended, kicked, shutdown): tell the broadcaster."""
        await publisher.wait_closed()
        if self.publisher is publisher and not self._done:
            self.publisher = None
            metrics.PUBLISHING.dec()
            await self._refuse(Refused("NetStream.Publish.Rejected",
                                       f"publishing ended: {publisher.close_reason}"))

    def _audio(self, timestamp: int, payload: bytes) -> None:
        if len(payload) < 2:
            return
        codec = payload[0] >> 4
        if codec != 10:
            name = "enhanced RTMP audio" if codec == 9 else AUDIO_CODECS.get(codec, str(codec))
            raise Refused("NetStream.Publish.Rejected", f"audio codec {name} is refused: send AAC")
        if payload[1] == 0:
            if self.media.audio is None:
                try:
                    self.media.audio = AacToOpus(payload[2:])
                except UnsupportedAudio as exc:
                    raise Refused("NetStream.Publish.Rejected", str(exc)) from None
            return
        transcoder = self.media.audio
        publisher = self.publisher
        if transcoder is None or publisher is None:
            return  # before the first video frame, or an audio track announced too late
        self.media.stats.audio_frames += 1
        for packet in transcoder.transcode(payload[2:], timestamp):
            self.media.stats.opus_packets += 1
            publisher.send("audio", packet)


__all__ = ["IngestStats", "PublishRequest", "Refused", "RtmpConnection", "RtmpIngest", "parse_stream"]
