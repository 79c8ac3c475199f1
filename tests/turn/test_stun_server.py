"""The embedded STUN binding server, spoken to by clients we did not write.

Clients: the PyPI ``stun`` package (request encoding and response header),
coturn's ``turnutils_stunclient`` (a C implementation, IPv4 and IPv6), and raw
datagrams decoded here straight from RFC 8489 (not through aioice, which the
server is built on). Loopback only.
"""

from __future__ import annotations

import asyncio
import binascii
import os
import re
import shutil
import socket
import struct
import subprocess

import pytest
import stun as pypi_stun
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from config import Settings
from tests.turn.turn_testing import has_ipv6_loopback
from turn import SourceRateLimiter, StunServer, binding_response

pytestmark = pytest.mark.timeout(60)
HAS_IPV6_LOOPBACK = has_ipv6_loopback()

COOKIE = 0x2112A442
QUIET = 0.3  # seconds to wait before concluding that no answer is coming


# --- an RFC 8489 codec written for the tests ---------------------------------------


def request(
    tid: bytes | None = None,
    attrs: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
    *,
    fingerprint: bool = False,
    msg_type: int = 0x0001,
    cookie: int = COOKIE,
) -> bytes:
    tid = tid or os.urandom(12)
    body = b""
    for attr_type, value in attrs:
        body += struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    if fingerprint:
        head = struct.pack("!HHI12s", msg_type, len(body) + 8, cookie, tid)
        crc = binascii.crc32(head + body) ^ 0x5354554E
        body += struct.pack("!HHI", 0x8028, 4, crc)
    return struct.pack("!HHI12s", msg_type, len(body), cookie, tid) + body


def attributes(message: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 20
    while pos < len(message):
        attr_type, length = struct.unpack("!HH", message[pos : pos + 4])
        out.append((attr_type, message[pos + 4 : pos + 4 + length]))
        pos += 4 + length + (-length % 4)
    assert pos == len(message)
    return out


def xor_mapped_address(message: bytes) -> tuple[str, int]:
    """RFC 8489 section 14.2, by hand."""
    tid = message[8:20]
    (value,) = [v for t, v in attributes(message) if t == 0x0020]
    family = value[1]
    port = struct.unpack("!H", value[2:4])[0] ^ (COOKIE >> 16)
    if family == 0x01:
        assert len(value) == 8
        raw = bytes(a ^ b for a, b in zip(value[4:8], struct.pack("!I", COOKIE), strict=True))
        return socket.inet_ntop(socket.AF_INET, raw), port
    assert family == 0x02 and len(value) == 20
    pad = struct.pack("!I", COOKIE) + tid
    raw = bytes(a ^ b for a, b in zip(value[4:20], pad, strict=True))
    return socket.inet_ntop(socket.AF_INET6, raw), port


def fingerprint_ok(message: bytes) -> bool:
    attr_type, length, value = struct.unpack("!HHI", message[-8:])
    return (
        attr_type == 0x8028 and length == 4 and value == binascii.crc32(message[:-8]) ^ 0x5354554E
    )


class Peer:
    """A UDP socket on loopback that sends datagrams and collects what comes back."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data, to)

    async def recv(self, wait: float = 2.0) -> bytes | None:
        loop = asyncio.get_running_loop()
        try:
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 4096), wait)
        except TimeoutError:
            return None
        return data

    async def drain(self, quiet: float = QUIET) -> list[bytes]:
        got = []
        while (data := await self.recv(quiet)) is not None:
            got.append(data)
        return got

    async def ask(self, data: bytes, to: tuple[str, int]) -> bytes | None:
        self.send(data, to)
        return await self.recv()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peers():  # type: ignore[no-untyped-def]
    made: list[Peer] = []

    def make(host: str = "127.0.0.1") -> Peer:
        made.append(Peer(host))
        return made[-1]

    yield make
    for p in made:
        p.close()


def counter(result: str) -> float:
    return REGISTRY.get_sample_value("airwave_stun_requests_total", {"result": result}) or 0.0


# --- clients we did not write -------------------------------------------------------


async def test_pypi_stun_client_request_gets_our_mapped_address(stun_server, peers) -> None:  # type: ignore[no-untyped-def]
    peer = peers()
    req = pypi_stun.Package.new(msg_type=pypi_stun.MessageType.BIND_REQUEST)
    tid = req.head.trans_id.get_bytes()  # the package's 16 bytes: cookie + transaction id
    reply = await peer.ask(req.get_bytes(), ("127.0.0.1", stun_server.port))
    assert reply is not None

    parsed = pypi_stun.Package.parse(data=reply)
    assert parsed is not None
    assert parsed.head.msg_type == pypi_stun.MessageType.BIND_RESPONSE
    assert parsed.head.trans_id.get_bytes() == tid
    # The package mis-decodes XOR-MAPPED-ADDRESS (its XOR runs over reversed
    # bytes), so the address is read by hand from the RFC.
    assert xor_mapped_address(reply) == ("127.0.0.1", peer.address[1])


def stunclient(host: str, port: int) -> str:
    binary = shutil.which("turnutils_stunclient")
    assert binary, "turnutils_stunclient not found: apt-get install coturn"
    result = subprocess.run(
        [binary, "-p", str(port), host], capture_output=True, text=True, timeout=15, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def test_coturn_stunclient_ipv4(stun_server) -> None:  # type: ignore[no-untyped-def]
    out = await asyncio.to_thread(stunclient, "127.0.0.1", stun_server.port)
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", out), out


@pytest.mark.skipif(not HAS_IPV6_LOOPBACK, reason="no ::1 on this machine")
async def test_coturn_stunclient_ipv6(stun_server) -> None:  # type: ignore[no-untyped-def]
    out = await asyncio.to_thread(stunclient, "::1", stun_server.port)
    assert re.search(r"IPv6\. UDP reflexive addr: ::1:\d+", out), out


@pytest.mark.skipif(not HAS_IPV6_LOOPBACK, reason="no ::1 on this machine")
async def test_ipv6_mapped_address_and_port(stun_server, peers) -> None:  # type: ignore[no-untyped-def]
    peer = peers("::1")
    reply = await peer.ask(request(), ("::1", stun_server.port))
    assert reply is not None
    assert xor_mapped_address(reply) == ("::1", peer.address[1])


async def test_dual_stack_reports_plain_ipv4(peers) -> None:  # type: ignore[no-untyped-def]
    """Bound on "::", an IPv4 client sees 127.0.0.1, not ::ffff:127.0.0.1."""
    async with StunServer() as server:
        await server.start("::", 0)
        peer = peers()
        reply = await peer.ask(request(), ("127.0.0.1", server.port))
        assert reply is not None
        assert xor_mapped_address(reply) == ("127.0.0.1", peer.address[1])
        if HAS_IPV6_LOOPBACK:
            peer6 = peers("::1")
            reply = await peer6.ask(request(), ("::1", server.port))
            assert reply is not None
            assert xor_mapped_address(reply) == ("::1", peer6.address[1])


# --- what the server answers and what it drops ------------------------------------------


async def test_response_shape(stun_server, peers) -> None:  # type: ignore[no-untyped-def]
    peer = peers()
    tid = os.urandom(12)
    reply = await peer.ask(request(tid), ("127.0.0.1", stun_server.port))
    assert reply is not None
    msg_type, length, cookie, got_tid = struct.unpack("!HHI12s", reply[:20])
    assert (msg_type, cookie, got_tid) == (0x0101, COOKIE, tid)
    assert length == len(reply) - 20
    assert [t for t, _ in attributes(reply)] == [0x0020]  # XOR-MAPPED-ADDRESS only


async def test_fingerprint_iff_requested(stun_server, peers) -> None:  # type: ignore[no-untyped-def]
    peer = peers()
    to = ("127.0.0.1", stun_server.port)
    plain = await peer.ask(request(), to)
    assert plain is not None and 0x8028 not in [t for t, _ in attributes(plain)]

    with_fp = await peer.ask(request(fingerprint=True), to)
    assert with_fp is not None
    assert [t for t, _ in attributes(with_fp)] == [0x0020, 0x8028]
    assert fingerprint_ok(with_fp)
    assert xor_mapped_address(with_fp) == ("127.0.0.1", peer.address[1])


def malformed_datagrams() -> dict[str, bytes]:
    good = request(fingerprint=True)
    tid = os.urandom(12)
    return {
        "empty": b"",
        "truncated header": good[:19],
        "truncated body": good[:-4],
        "wrong cookie": request(cookie=0xDEADBEEF),
        "RFC 3489 (no cookie)": struct.pack("!HH16s", 0x0001, 0, os.urandom(16)),
        "length too long": struct.pack("!HHI12s", 0x0001, 8, COOKIE, tid),
        "length too short": struct.pack("!HHI12s", 0x0001, 0, COOKIE, tid) + b"\x80\x22\x00\x00",
        "length not a multiple of 4": struct.pack("!HHI12s", 0x0001, 2, COOKIE, tid) + b"\0\0",
        "top bits set": request(msg_type=0xC001),
        "binding response": request(msg_type=0x0101, attrs=[(0x0020, bytes(8))]),
        "binding error response": request(msg_type=0x0111),
        "binding indication": request(msg_type=0x0011),
        "allocate request": request(msg_type=0x0003),
        "unknown method": request(msg_type=0x0FEF),
        "trailing garbage": good + b"\0\0\0\0",
        "bad fingerprint": good[:-1] + bytes([good[-1] ^ 1]),
        "fingerprint not last": request(attrs=[(0x8028, b"\0\0\0\0"), (0x8022, b"airwave\0")]),
        "attribute overruns": struct.pack("!HHI12s", 0x0001, 8, COOKIE, tid)
        + struct.pack("!HH", 0x8022, 200)
        + b"abcd",
        "half an attribute header": struct.pack("!HHI12s", 0x0001, 4, COOKIE, tid)
        + b"\x80\x22\x00",
        "bad PRIORITY length": request(attrs=[(0x0024, b"\x01")]),
        "bad USERNAME utf-8": request(attrs=[(0x0006, b"\xff\xfe")]),
        "random bytes": os.urandom(64),
        "DTLS-looking": bytes([22, 254, 253]) + os.urandom(40),
        "RTP-looking": bytes([0x80, 0x60]) + os.urandom(30),
    }


@pytest.mark.parametrize("name", list(malformed_datagrams()))
def test_malformed_is_dropped_by_the_codec(name: str) -> None:
    assert binding_response(malformed_datagrams()[name], ("127.0.0.1", 5000)) is None


async def test_malformed_get_no_answer_and_server_keeps_answering(stun_server, peers) -> None:  # type: ignore[no-untyped-def]
    peer = peers()
    to = ("127.0.0.1", stun_server.port)
    bad = malformed_datagrams()
    dropped_before = counter("dropped")
    for data in bad.values():
        peer.send(data, to)
    assert await peer.drain() == []
    assert counter("dropped") - dropped_before == len(bad)

    tid = os.urandom(12)
    reply = await peer.ask(request(tid), to)
    assert reply is not None and reply[8:20] == tid


async def test_unknown_comprehension_required_attribute_gets_420(stun_server, peers) -> None:  # type: ignore[no-untyped-def]
    peer = peers()
    tid = os.urandom(12)
    change_request = (0x0003, b"\0\0\0\x06")  # RFC 5780, which we do not do
    reply = await peer.ask(
        request(tid, [change_request], fingerprint=True), ("127.0.0.1", stun_server.port)
    )
    assert reply is not None
    assert struct.unpack("!HHI12s", reply[:20]) == (0x0111, len(reply) - 20, COOKIE, tid)
    attrs = dict(attributes(reply))
    assert attrs[0x0009][2:4] == bytes([4, 20])  # ERROR-CODE class 4, number 20
    assert attrs[0x000A] == b"\x00\x03"  # UNKNOWN-ATTRIBUTES
    assert fingerprint_ok(reply)


async def test_unknown_comprehension_optional_attribute_is_ignored(stun_server, peers) -> None:  # type: ignore[no-untyped-def]
    peer = peers()
    reply = await peer.ask(request(attrs=[(0x8050, b"xyz")]), ("127.0.0.1", stun_server.port))
    assert reply is not None and reply[:2] == b"\x01\x01"


async def test_answers_only_the_source_never_a_named_address(stun_server, peers) -> None:  # type: ignore[no-untyped-def]
    """RESPONSE-ADDRESS (RFC 3489) naming another socket: the answer still goes to the source."""
    sender, bystander = peers(), peers()
    host, port = bystander.address
    response_address = struct.pack("!BBH4s", 0, 1, port, socket.inet_aton(host))
    sender.send(request(attrs=[(0x0002, response_address)]), ("127.0.0.1", stun_server.port))
    got = await sender.recv()
    assert got is not None and got[:2] == b"\x01\x11"  # 420: RESPONSE-ADDRESS is not understood
    assert await bystander.drain() == []


# --- rate limit -------------------------------------------------------------------------


async def test_rate_limit_drops_the_surplus_and_recovers(peers) -> None:  # type: ignore[no-untyped-def]
    async with StunServer(rate_limit=10) as server:
        await server.start("127.0.0.1", 0)
        to = ("127.0.0.1", server.port)
        flooder = peers()
        limited_before = counter("limited")
        for _ in range(40):
            flooder.send(request(), to)
        answered = len(await flooder.drain())
        assert 10 <= answered <= 12  # the burst (one second's worth), maybe one refill
        assert counter("limited") - limited_before == 40 - answered

        # Another source address is not held back by the flooder.
        other = peers("127.0.0.2")
        assert await other.ask(request(), to) is not None

        await asyncio.sleep(1.1)  # a second later the bucket is full again
        for _ in range(5):
            flooder.send(request(), to)
        assert len(await flooder.drain()) == 5


def test_rate_limit_is_per_address_not_per_port() -> None:
    clock = [0.0]
    limiter = SourceRateLimiter(2, clock=lambda: clock[0])
    assert [limiter.allow("192.0.2.1") for _ in range(3)] == [True, True, False]
    assert limiter.allow("192.0.2.9")
    clock[0] += 0.5  # one token back
    assert [limiter.allow("192.0.2.1") for _ in range(2)] == [True, False]


def test_rate_limiter_memory_is_bounded() -> None:
    clock = [0.0]
    limiter = SourceRateLimiter(10, max_sources=100, clock=lambda: clock[0])
    for i in range(10_000):  # a spoofed flood from many addresses
        limiter.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        assert len(limiter) <= 100
    clock[0] += 5.0  # every bucket full again: forgotten as the table is touched
    for _ in range(20):
        limiter.allow("198.51.100.1")
    assert len(limiter) == 1


def test_rate_limiter_forgets_idle_sources() -> None:
    clock = [0.0]
    limiter = SourceRateLimiter(10, clock=lambda: clock[0])
    for i in range(50):
        limiter.allow(f"192.0.2.{i}")
    assert len(limiter) == 50
    clock[0] += 2.0
    for _ in range(10):
        limiter.allow("198.51.100.1")
    assert len(limiter) == 1


def test_zero_rate_means_no_limit() -> None:
    limiter = SourceRateLimiter(0)
    assert all(limiter.allow("192.0.2.1") for _ in range(1000))
    assert len(limiter) == 0


def test_from_settings_uses_stun_rate_limit() -> None:
    server = StunServer.from_settings(Settings().with_overrides(stun_rate_limit=7))
    assert server.limiter.rate == 7


# --- life cycle ---------------------------------------------------------------------


async def test_close_frees_the_port_and_stops_answering(peers) -> None:  # type: ignore[no-untyped-def]
    server = StunServer()
    await server.start("127.0.0.1", 0)
    port = server.port
    assert server.addresses == [("127.0.0.1", port)]
    peer = peers()
    assert await peer.ask(request(), ("127.0.0.1", port)) is not None
    await server.close()
    peer.send(request(), ("127.0.0.1", port))
    assert await peer.drain() == []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # free again
    with pytest.raises(RuntimeError):
        _ = server.port


async def test_start_on_a_taken_port_raises_and_leaves_nothing_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        server = StunServer()
        with pytest.raises(OSError):
            await server.start("127.0.0.1", taken.getsockname()[1])
        assert server.addresses == []


async def test_answered_counter(stun_server, peers) -> None:  # type: ignore[no-untyped-def]
    before = counter("answered")
    peer = peers()
    assert await peer.ask(request(), ("127.0.0.1", stun_server.port)) is not None
    assert counter("answered") == before + 1


# --- the codec never raises -------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_codec_total_on_random_bytes(data: bytes) -> None:
    binding_response(data, ("127.0.0.1", 5000))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=6), st.booleans()
)
def test_codec_total_on_framed_attributes(attrs: list[tuple[int, bytes]], fp: bool) -> None:
    reply = binding_response(request(attrs=attrs, fingerprint=fp), ("::ffff:127.0.0.1", 5000))
    if reply is not None:
        assert reply[:2] in (b"\x01\x01", b"\x01\x11")
        if reply[:2] == b"\x01\x01":
            assert xor_mapped_address(reply) == ("127.0.0.1", 5000)
