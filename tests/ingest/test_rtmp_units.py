"""The RTMP ingest's parts on their own: AMF0, the chunk stream, the AVC
configuration record and H.264 packetization (RFC 6184), stream names."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest import Refused, parse_stream
from ingest.amf0 import AmfError, decode_all, encode
from ingest.avc import MAX_PAYLOAD, H264Packetizer, UnsupportedVideo, parse_avc_config
from ingest.chunks import (
    HANDSHAKE_SIZE,
    VIDEO,
    ChunkReader,
    ChunkWriter,
    ProtocolError,
    server_handshake,
)

SPS_MAIN = bytes.fromhex("674d400dda0507e840000003004000000f23c50aa8")
SPS_HIGH = bytes.fromhex("6764000dacb40a0fd080000003008000001e478a1550")
PPS = bytes.fromhex("68ef0fc8")


def avc_config(sps: bytes, pps: bytes = PPS) -> bytes:
    return (bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
            + b"\x01" + len(pps).to_bytes(2, "big") + pps)


def test_amf0_round_trip_of_a_connect_command() -> None:
    values = ["connect", 1.0, {"app": "live/r1", "tcUrl": "rtmp://h/live/r1", "fpad": False,
                               "nested": {"a": None}}, None, [1.0, "x"]]
    assert decode_all(encode(*values)) == values


def test_amf0_ecma_array_and_truncation() -> None:
    ecma = bytes([0x08]) + (1).to_bytes(4, "big") + b"\x00\x01k" + encode(2.0) + b"\x00\x00\x09"
    assert decode_all(ecma) == [{"k": 2.0}]
    with pytest.raises(AmfError):
        decode_all(encode("publish")[:-2])


@given(st.binary(max_size=64))
def test_amf0_never_raises_anything_but_amf_error(data: bytes) -> None:
    try:
        decode_all(data)
    except AmfError:
        pass


async def test_handshake_answers_s0_s1_s2_with_c1_echoed_and_refuses_other_versions() -> None:
    done: list[BaseException | None] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await server_handshake(reader, writer)
            done.append(None)
        except (ProtocolError, asyncio.IncompleteReadError) as exc:
            done.append(exc)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c1 = bytes(range(256)) * 6
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x03" + c1)
    s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
    assert s0s1s2[0] == 3 and s0s1s2[5:9] == bytes(4)  # S1's version zero: the plain handshake
    assert s0s1s2[1 + HANDSHAKE_SIZE :] == c1
    writer.write(s0s1s2[1 : 1 + HANDSHAKE_SIZE])  # C2 echoes S1
    await writer.drain()
    assert await reader.read() == b""
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x06" + c1)  # RTMPE
    assert await reader.read() == b""
    writer.close()
    server.close()
    await server.wait_closed()
    assert done[0] is None and isinstance(done[1], ProtocolError)


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


async def _read_all(raw: bytes, count: int) -> list:
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    chunks = ChunkReader(reader, ChunkWriter(_Sink()))  # type: ignore[arg-type]
    return [await chunks.read_message() for _ in range(count)]


async def test_chunk_stream_reassembles_interleaved_messages_and_obeys_chunk_size() -> None:
    sink = _Sink()
    writer = ChunkWriter(sink)  # type: ignore[arg-type]
    writer.set_chunk_size(100)
    big = bytes(range(256)) * 4
    writer.write(6, VIDEO, 1, big, timestamp=0x1000000)  # extended timestamp
    writer.write(4, 20, 0, encode("deleteStream", 0.0, None, 1.0), timestamp=5)
    messages = await _read_all(bytes(sink.data), 2)
    assert messages[0].payload == big and messages[0].timestamp == 0x1000000
    assert messages[0].stream_id == 1
    assert decode_all(messages[1].payload)[0] == "deleteStream"


async def test_chunk_stream_refuses_a_stream_without_a_full_header_and_huge_messages() -> None:
    with pytest.raises(ProtocolError):
        await _read_all(bytes([0x46]) + b"\x00\x00\x01", 1)
    huge = bytes([0x06]) + b"\x00\x00\x00" + (0xFFFFFF).to_bytes(3, "big") + bytes([9]) + bytes(4)
    with pytest.raises(ProtocolError):
        await _read_all(huge, 1)
    zero_chunk = bytes([0x02]) + bytes(3) + (4).to_bytes(3, "big") + bytes([1]) + bytes(4) + bytes(4)
    with pytest.raises(ProtocolError):
        await _read_all(zero_chunk, 1)


def test_avc_config_main_is_accepted_high_is_refused_with_the_fix() -> None:
    config = parse_avc_config(avc_config(SPS_MAIN))
    assert config.profile_level_id == "4d000d" and config.sps == (SPS_MAIN,)
    assert config.codec().parameters["packetization-mode"] == "1"
    with pytest.raises(UnsupportedVideo, match="High profile is refused.*main or baseline"):
        parse_avc_config(avc_config(SPS_HIGH))
    with pytest.raises(UnsupportedVideo):
        parse_avc_config(avc_config(SPS_MAIN)[:12])


def test_h264_packetizer_sends_parameter_sets_before_idr_and_fragments_large_units() -> None:
    packetizer = H264Packetizer(parse_avc_config(avc_config(SPS_MAIN)))
    idr = bytes([0x65]) + bytes(range(256)) * 12  # 3073 bytes: three FU-A fragments
    packets = list(packetizer.packetize([bytes([0x09, 0xF0]), idr], 1000))
    payloads = [p[12:] for p in packets]
    assert payloads[0][0] & 0x1F == 24  # STAP-A: SPS, PPS
    assert payloads[0][3:3 + len(SPS_MAIN)] == SPS_MAIN
    fragments = payloads[1:]
    assert all(f[0] & 0x1F == 28 and f[1] & 0x1F == 5 for f in fragments)
    assert fragments[0][1] & 0x80 and fragments[-1][1] & 0x40
    assert bytes([0x65]) + b"".join(f[2:] for f in fragments) == idr
    assert all(len(p) <= MAX_PAYLOAD for p in payloads)
    assert [p[1] >> 7 for p in packets] == [0] * (len(packets) - 1) + [1]
    seqs = [struct.unpack("!H", p[2:4])[0] for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    delta = list(packetizer.packetize([bytes([0x41, 1, 2, 3])], 1033))
    assert len(delta) == 1 and delta[0][12:] == bytes([0x41, 1, 2, 3])
    ts = [struct.unpack("!I", p[4:8])[0] for p in (packets[0], delta[0])]
    assert (ts[1] - ts[0]) & 0xFFFFFFFF == 33 * 90


def test_stream_names_of_ffmpeg_and_obs() -> None:
    assert parse_stream("live", "room1?key=k1") == ("room1", "k1")
    assert parse_stream("live/room1", "k1") == ("room1", "k1")
    with pytest.raises(Refused, match="unknown application"):
        parse_stream("vod", "room1?key=k1")
    with pytest.raises(Refused, match="stream key"):
        parse_stream("live", "room1")
    with pytest.raises(Refused, match="bad room id"):
        parse_stream("live/../x", "k")
