"""RTMP's transport: the handshake and the chunk stream (Adobe RTMP 1.0, sections 5.2-5.4).

The handshake is the plain one (C0/C1/C2, S0/S1/S2 with S2 echoing C1),
which FFmpeg and OBS use for ``rtmp://`` (librtmp asks for the Flash 9
digest handshake only for RTMPE or SWF verification, and falls back to the
plain one when S1's version bytes are zero, as ours are). Messages are read whole from the
interleaved chunk streams, with the peer's chunk size, abort, and
acknowledgements sent at the peer's window; everything else is for the
caller to interpret. Inputs are bounded: a message longer than
``MAX_MESSAGE``, more than ``MAX_BUFFERED`` bytes of unfinished messages or
a chunk size out of range ends the connection.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from dataclasses import dataclass

HANDSHAKE_SIZE = 1536
RTMP_VERSION = 3
MAX_MESSAGE = 8 * 1024 * 1024
MAX_BUFFERED = 16 * 1024 * 1024  # parts of messages held at once, all chunk streams together
MAX_CHUNK_SIZE = 0x7FFFFFFF
MAX_CHUNK_STREAMS = 16
OUR_CHUNK_SIZE = 4096
OUR_WINDOW = 5_000_000

# message types
SET_CHUNK_SIZE, ABORT, ACKNOWLEDGEMENT, USER_CONTROL = 1, 2, 3, 4
WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 5, 6
AUDIO, VIDEO = 8, 9
DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0, AGGREGATE = 15, 17, 18, 20, 22
STREAM_BEGIN = 0


class ProtocolError(Exception):
    """The peer broke the RTMP chunk stream; the connection ends."""


@dataclass
class Message:
    type: int
    stream_id: int
    timestamp: int  # milliseconds, 32 bits
    payload: bytes


@dataclass
class _ChunkStream:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type: int = 0
    stream_id: int = 0
    extended: bool = False
    partial: bytearray | None = None


async def server_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    c0c1 = await reader.readexactly(1 + HANDSHAKE_SIZE)
    if c0c1[0] != RTMP_VERSION:
        raise ProtocolError(f"RTMP version {c0c1[0]} is not supported (3 is)")
    c1 = c0c1[1:]
    now = int(time.monotonic() * 1000) & 0xFFFFFFFF
    s1 = struct.pack("!II", now, 0) + os.urandom(HANDSHAKE_SIZE - 8)
    s2 = c1  # C1 echoed whole: librtmp (OBS) compares all of it and warns on a difference
    writer.write(bytes([RTMP_VERSION]) + s1 + s2)
    await writer.drain()
    await reader.readexactly(HANDSHAKE_SIZE)  # C2: the client's echo of S1


class ChunkReader:
    """Whole messages from the peer's interleaved chunk streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: ChunkWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._streams: dict[int, _ChunkStream] = {}
        self.chunk_size = 128
        self.bytes_read = 0
        self._window = 0
        self._acked = 0

    async def _read(self, n: int) -> bytes:
        data = await self._reader.readexactly(n)
        self.bytes_read += n
        return data

    async def read_message(self) -> Message:
        """The next whole message; protocol control messages are applied here
        (and returned too, except set chunk size, abort and acknowledgement)."""
        while True:
            message = await self._read_chunk()
            if message is None:
                continue
            if message.type == SET_CHUNK_SIZE:
                size = int.from_bytes(message.payload[:4], "big") if len(message.payload) >= 4 else 0
                if not 1 <= size <= MAX_CHUNK_SIZE:
                    raise ProtocolError(f"chunk size {size} out of range")
                self.chunk_size = size
                continue
            if message.type == ABORT:
                csid = int.from_bytes(message.payload[:4], "big") if len(message.payload) >= 4 else -1
                stream = self._streams.get(csid)
                if stream is not None:
                    stream.partial = None
                continue
            if message.type == ACKNOWLEDGEMENT:
                continue
            if message.type == WINDOW_ACK_SIZE and len(message.payload) >= 4:
                self._window = int.from_bytes(message.payload[:4], "big")
            return message

    async def _read_chunk(self) -> Message | None:
        first = (await self._read(1))[0]
        fmt, csid = first >> 6, first & 0x3F
        if csid == 0:
            csid = 64 + (await self._read(1))[0]
        elif csid == 1:
            b = await self._read(2)
            csid = 64 + b[0] + (b[1] << 8)
        stream = self._streams.get(csid)
        if stream is None:
            if fmt != 0:
                raise ProtocolError(f"chunk stream {csid} starts without a full header")
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise ProtocolError("too many chunk streams")
            stream = self._streams[csid] = _ChunkStream()
        starts = stream.partial is None
        if fmt <= 2:
            header = await self._read((11, 7, 3)[fmt])
            stamp = int.from_bytes(header[0:3], "big")
            if fmt <= 1:
                stream.length = int.from_bytes(header[3:6], "big")
                stream.type = header[6]
            if fmt == 0:
                stream.stream_id = int.from_bytes(header[7:11], "little")
            stream.extended = stamp == 0xFFFFFF
            if stream.extended:
                stamp = int.from_bytes(await self._read(4), "big")
            if fmt == 0:
                stream.timestamp = stamp
                stream.delta = 0
            else:
                stream.delta = stamp
                stream.timestamp = (stream.timestamp + stamp) & 0xFFFFFFFF
            if not starts:
                raise ProtocolError(f"new message header inside a message on chunk stream {csid}")
        else:
            if stream.extended:
                await self._read(4)  # the extended timestamp is repeated
            if starts:
                stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
        if stream.length > MAX_MESSAGE:
            raise ProtocolError(f"message of {stream.length} bytes is over {MAX_MESSAGE}")
        if starts:
            stream.partial = bytearray()
            buffered = sum(len(s.partial) for s in self._streams.values() if s.partial)
            if buffered + stream.length > MAX_BUFFERED:
                raise ProtocolError("too many large messages in progress at once")
        assert stream.partial is not None
        take = min(self.chunk_size, stream.length - len(stream.partial))
        stream.partial += await self._read(take)
        self._acknowledge()
        if len(stream.partial) < stream.length:
            return None
        payload = bytes(stream.partial)
        stream.partial = None
        return Message(stream.type, stream.stream_id, stream.timestamp, payload)

    def _acknowledge(self) -> None:
        if self._window and self.bytes_read - self._acked >= self._window:
            self._acked = self.bytes_read
            self._writer.write(2, ACKNOWLEDGEMENT, 0, struct.pack("!I", self.bytes_read & 0xFFFFFFFF))


class ChunkWriter:
    """Messages to the peer, in chunks of ``OUR_CHUNK_SIZE`` once announced."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.chunk_size = 128

    def write(self, csid: int, type_: int, stream_id: int, payload: bytes, timestamp: int = 0) -> None:
        header = bytes([csid & 0x3F]) + struct.pack(
            "!I", min(timestamp, 0xFFFFFF)
        )[1:] + struct.pack("!I", len(payload))[1:] + bytes([type_]) + struct.pack("<I", stream_id)
        out = bytearray(header)
        if timestamp >= 0xFFFFFF:
            out += struct.pack("!I", timestamp & 0xFFFFFFFF)
        for pos in range(0, max(len(payload), 1), self.chunk_size):
            if pos:
                out.append(0xC0 | (csid & 0x3F))
                if timestamp >= 0xFFFFFF:
                    out += struct.pack("!I", timestamp & 0xFFFFFFFF)
            out += payload[pos : pos + self.chunk_size]
        self._writer.write(bytes(out))

    def set_chunk_size(self, size: int) -> None:
        self.write(2, SET_CHUNK_SIZE, 0, struct.pack("!I", size))
        self.chunk_size = size

    def control(self, type_: int, payload: bytes) -> None:
        self.write(2, type_, 0, payload)

    async def drain(self) -> None:
        await self._writer.drain()


__all__ = ["ChunkReader", "ChunkWriter", "Message", "ProtocolError", "server_handshake"]
