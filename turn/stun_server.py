"""Embedded STUN binding server (RFC 8489, Binding over UDP, no authentication).

It answers a well-formed Binding request with a success response carrying
XOR-MAPPED-ADDRESS (and FINGERPRINT when the request had one), answers a
request with unknown comprehension-required attributes with a 420 error, and
silently drops everything else. A response only ever goes back to the source
address of the datagram it answers, and each source IP address is held to a
token bucket so the server cannot be used to flood a spoofed victim.

The message code is aioice's (:mod:`aioice.stun`); this module adds the strict
checks a server facing the Internet needs, which aioice's lenient parser
leaves out (exact length, attribute framing, FINGERPRINT last).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aioice import stun
from prometheus_client import Counter

from config import Settings

logger = logging.getLogger(__name__)

STUN_REQUESTS = Counter(
    "airwave_stun_requests",
    "STUN datagrams received by the embedded STUN server, by outcome",
    ["result"],
)
_ANSWERED = STUN_REQUESTS.labels(result="answered")
_DROPPED = STUN_REQUESTS.labels(result="dropped")
_LIMITED = STUN_REQUESTS.labels(result="limited")

BINDING_REQUEST = 0x0001
ATTR_FINGERPRINT = 0x8028
ATTR_UNKNOWN_ATTRIBUTES = 0x000A

# Comprehension-required attributes (0x0000-0x7FFF) a Binding request may carry
# that we understand, or may safely ignore as a server without authentication:
# RFC 8489 section 18.3.1 and the ICE ones of RFC 8445.
UNDERSTOOD_REQUIRED = frozenset(
    {
        0x0001,  # MAPPED-ADDRESS
        0x0006,  # USERNAME
        0x0008,  # MESSAGE-INTEGRITY
        0x0009,  # ERROR-CODE
        0x000A,  # UNKNOWN-ATTRIBUTES
        0x0014,  # REALM
        0x0015,  # NONCE
        0x001C,  # MESSAGE-INTEGRITY-SHA256
        0x001D,  # PASSWORD-ALGORITHM
        0x001E,  # USERHASH
        0x0020,  # XOR-MAPPED-ADDRESS
        0x0024,  # PRIORITY (ICE)
        0x0025,  # USE-CANDIDATE (ICE)
    }
)

Address = tuple[str, int]


def binding_response(data: bytes, source: Address) -> bytes | None:
    """The datagram to send back to ``source`` for ``data``, or None to drop it.

    Pure and total: never raises, whatever ``data`` holds.
    """
    try:
        return _binding_response(data, source)
    except Exception:  # a malformed attribute aioice chokes on, or anything else
        return None


def _binding_response(data: bytes, source: Address) -> bytes | None:
    if len(data) < stun.HEADER_LENGTH:
        return None
    message_type, length, cookie = struct.unpack("!HHI", data[:8])
    if message_type != BINDING_REQUEST:  # also rejects the top two bits and other classes
        return None
    if cookie != stun.COOKIE or length % 4 or len(data) != stun.HEADER_LENGTH + length:
        return None
    unknown = _walk_attributes(data)
    if unknown is None:
        return None
    request = stun.parse_message(data)  # checks FINGERPRINT when present
    fingerprint = "FINGERPRINT" in request.attributes
    mapped = _mapped_address(source)

    if unknown:
        error = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.ERROR,
            transaction_id=request.transaction_id,
            attributes={"ERROR-CODE": (420, "Unknown Attribute")},
        )
        value = b"".join(struct.pack("!H", t) for t in unknown)
        body = bytes(error)[stun.HEADER_LENGTH :]
        body += struct.pack("!HH", ATTR_UNKNOWN_ATTRIBUTES, len(value)) + value
        body += bytes(stun.padding_length(len(value)))
        return _frame(bytes(error)[: stun.HEADER_LENGTH], body, fingerprint)

    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
        attributes={"XOR-MAPPED-ADDRESS": mapped},
    )
    if fingerprint:
        response.add_fingerprint()
    return bytes(response)


def _walk_attributes(data: bytes) -> list[int] | None:
    """Unknown comprehension-required attribute types, or None if badly framed.

    Every attribute must fit in the body with its padding, the last one must end
    exactly at the end of the message, and FINGERPRINT, if any, must be last.
    """
    unknown: list[int] = []
    pos = stun.HEADER_LENGTH
    end = len(data)
    while pos < end:
        if end - pos < 4:
            return None
        attr_type, attr_len = struct.unpack("!HH", data[pos : pos + 4])
        nxt = pos + 4 + attr_len + stun.padding_length(attr_len)
        if nxt > end:
            return None
        if attr_type == ATTR_FINGERPRINT and (attr_len != 4 or nxt != end):
            return None
        if attr_type < 0x8000 and attr_type not in UNDERSTOOD_REQUIRED and attr_type not in unknown:
            unknown.append(attr_type)
        pos = nxt
    return unknown


def _frame(header: bytes, body: bytes, fingerprint: bool) -> bytes:
    """Header with the right length field, then body, then FINGERPRINT if asked."""
    message = stun.set_body_length(header, len(body)) + body
    if fingerprint:
        value = stun.message_fingerprint(message)
        message = stun.set_body_length(message, len(body) + stun.FINGERPRINT_LENGTH)
        message += struct.pack("!HHI", ATTR_FINGERPRINT, 4, value)
    return message


def _mapped_address(source: Address) -> Address:
    """The transport address to report: IPv4-mapped IPv6 becomes plain IPv4."""
    host = source[0].split("%", 1)[0]
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (str(ip), int(source[1]))


def _source_key(source: Address) -> str:
    host = source[0].split("%", 1)[0]
    if host.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            return host
        if mapped is not None:
            return str(mapped)
    return host


class SourceRateLimiter:
    """A token bucket per source, in a table that never holds more than ``max_sources``.

    Each source may send ``rate`` requests per second, with bursts up to
    ``burst`` (default: one second's worth). A source whose bucket is full again
    is forgotten; when the table is full anyway, the least recently seen source
    is forgotten. ``rate`` <= 0 means no limit.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        max_sources: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        self.max_sources = max_sources
        self._clock = clock
        # key -> (tokens, time of last update); oldest update first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = self._clock()
        self._forget_idle(now)
        entry = self._buckets.pop(key, None)
        if entry is None:
            tokens = self.burst
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
        else:
            tokens = min(self.burst, entry[0] + (now - entry[1]) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        return allowed

    def _forget_idle(self, now: float) -> None:
        """Drop sources at the front whose buckets have refilled: they are as new."""
        buckets = self._buckets
        for _ in range(8):  # bounded work per call; the table is bounded anyway
            if not buckets:
                return
            key, (tokens, last) = next(iter(buckets.items()))
            if tokens + (now - last) * self.rate < self.burst:
                return
            del buckets[key]


class _StunProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        try:
            self._server._handle(self, data, addr)
        except Exception:  # never let a datagram break the endpoint
            logger.exception("stun: unexpected error handling a datagram")

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable from a gone client) land here; nothing to do.
        logger.debug("stun: socket error %s", exc)


@dataclass(frozen=True)
class _Endpoint:
    transport: asyncio.DatagramTransport
    address: Address


class StunServer:
    """RFC 8489 Binding server over UDP.

    ``await server.start("::", 3478)`` binds one dual-stack socket (IPv4 and
    IPv6; IPv4 only when the machine has no IPv6); any other host binds that
    address only, and a list of hosts binds one socket each, on the same port.
    """

    def __init__(
        self,
        rate_limit: float = 50,
        *,
        max_sources: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = SourceRateLimiter(rate_limit, max_sources=max_sources, clock=clock)
        self._endpoints: list[_Endpoint] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> StunServer:
        return cls(rate_limit=settings.stun_rate_limit)

    @classmethod
    async def start_embedded(cls, settings: Settings) -> StunServer | None:
        """The node's (or the supervisor's) embedded STUN server on AIRWAVE_STUN_PORT,
        or None when it is off or its port is taken: one line says which setting to
        change and the node runs on (another node on this host answers STUN there)."""
        if not settings.stun_port:
            return None
        server = cls.from_settings(settings)
        try:
            await server.start("::", settings.stun_port)
        except OSError as exc:
            logger.error(
                "embedded STUN off: UDP %s is taken (%s); another node on this host may serve it, "
                "else set AIRWAVE_STUN_PORT to a free port (0 turns it off)",
                settings.stun_port, exc.strerror or exc,
            )
            return None
        return server

    @property
    def addresses(self) -> list[Address]:
        """(host, port) of every bound socket."""
        return [e.address for e in self._endpoints]

    @property
    def port(self) -> int:
        if not self._endpoints:
            raise RuntimeError("the STUN server is not started")
        return self._endpoints[0].address[1]

    async def start(self, host: str | Sequence[str] = "::", port: int = 3478) -> None:
        if self._endpoints:
            raise RuntimeError("the STUN server is already started")
        hosts = [host] if isinstance(host, str) else list(host)
        if not hosts:
            raise ValueError("no address to bind")
        try:
            for h in hosts:
                endpoint = await self._bind(h, port)
                self._endpoints.append(endpoint)
                port = endpoint.address[1]  # port 0: the others take the first one's
        except BaseException:
            await self.close()
            raise
        logger.info("stun: listening on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))

    async def _bind(self, host: str, port: int) -> _Endpoint:
        loop = asyncio.get_running_loop()
        if host in ("", "::"):
            sock = _dual_stack_socket(port)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except BaseException:
                sock.close()
                raise
        sock.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(lambda: _StunProtocol(self), sock=sock)
        bound = sock.getsockname()
        return _Endpoint(transport, (bound[0], bound[1]))

    async def close(self) -> None:
        endpoints, self._endpoints = self._endpoints, []
        for e in endpoints:
            e.transport.close()
        if endpoints:
            await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> StunServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _handle(self, protocol: _StunProtocol, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        source: Address = (addr[0], addr[1])
        if source[1] == 0:
            _DROPPED.inc()
            return
        if not self.limiter.allow(_source_key(source)):
            _LIMITED.inc()
            return
        reply = binding_response(data, source)
        if reply is None or protocol.transport is None:
            _DROPPED.inc()
            return
        protocol.transport.sendto(reply, addr)
        _ANSWERED.inc()


def _dual_stack_socket(port: int) -> socket.socket:
    """A UDP socket on every address, IPv6 and IPv4; IPv4 only without IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError as exc:  # no IPv6 in this kernel
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise
    else:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRNOTAVAIL:  # e.g. EADDRINUSE must not fall back
                raise
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("0.0.0.0", port))
    except BaseException:
        sock.close()
        raise
    return sock


__all__ = ["StunServer", "SourceRateLimiter", "binding_response", "STUN_REQUESTS"]
