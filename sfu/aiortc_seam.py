"""The one place where airwave touches aiortc's and aioice's internals.

The engine uses aiortc's public ORTC objects (RTCIceGatherer, RTCIceTransport,
RTCDtlsTransport, RTCCertificate) for ICE, DTLS and SRTP keying, but neither
RTCRtpReceiver (which decodes) nor RTCRtpSender (which encodes). Everything
below reaches past the public API; tests/sfu/test_seam.py checks that each
internal still exists and behaves, so an aiortc upgrade fails loudly there.

Internals used:

* ``RTCDtlsTransport._handle_rtp_data(data, arrival_time_ms)`` -- awaited by
  the transport's receive loop with each decrypted RTP packet; replaced per
  instance to get the raw bytes before aiortc parses and routes them.
* ``RTCDtlsTransport._handle_rtcp_data(data)`` -- awaited with each
  decrypted compound RTCP packet; wrapped per instance so that transport-cc
  feedback, which aiortc cannot parse, is taken out before aiortc parses the rest.
* ``RTCDtlsTransport._rtp_router`` (``RtpRouter.register_sender`` /
  ``register_receiver`` / ``unregister_*``) -- routes parsed RTCP (NACK,
  PLI, FIR, SR) to our objects by SSRC.
* ``RTCDtlsTransport._tx_srtp`` (pylibsrtp Session) -- protect RTP/RTCP.
* ``RTCDtlsTransport._set_role``, ``_task``.
* ``RTCIceTransport._connection`` -- the aioice Connection:
  ``_nominated[1]`` (CandidatePair: ``protocol.transport``, ``remote_addr``)
  for sending without a coroutine; ``ice_controlling``.
* aioice ``Connection.get_component_candidates`` (replaced per instance to
  bind the configured addresses and port range), ``query_consent`` (replaced
  per instance so that inbound traffic counts as consent), ``data_received``
  and ``request_received`` (wrapped per instance to see inbound traffic),
  ``build_request``, ``close``, ``_query_consent_task``, ``_protocols``;
  module constants ``CONSENT_INTERVAL`` and ``CONSENT_FAILURES``;
  ``gather_candidates`` (replaced per instance so as not to list the
  machine's interfaces at every gathering: ``_local_candidates_start``,
  ``_local_candidates``, ``_local_candidates_end``, ``_components``,
  ``_transport_policy``, ``_use_ipv4``, ``_use_ipv6``; module function
  ``get_host_addresses`` and ``TransportPolicy``);
  ``StunProtocol``; ``aioice.candidate.candidate_foundation`` /
  ``candidate_priority``.
* ICE restart (:class:`IceRestart`; aioice has none): ``RTCIceTransport._recv``
  / ``_send`` (instance attributes the DTLS transport reads afresh for every
  datagram: ``self.transport._recv()``), ``RTCIceGatherer._connection`` and
  ``_remote_candidates_end``; aioice ``Connection._queue`` (``recvfrom``
  awaits ``self._queue.get()``; ``close`` puts ``None`` in it) and
  ``_event_waiter`` (what ``RTCIceTransport._monitor`` awaits through
  ``get_event``); ``aiortc.rtcicetransport.candidate_from_aioice`` /
  ``candidate_to_aioice``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import aioice.ice as aioice_ice
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import (
    RTCIceCandidate,
    RTCIceParameters,
    RTCIceTransport,
    candidate_from_aioice,
    candidate_to_aioice,
)

logger = logging.getLogger(__name__)

RtpHandler = Callable[[bytes], None]


# --- receiving ------------------------------------------------------------------


def tap_rtp(dtls: RTCDtlsTransport, handler: RtpHandler) -> None:
    """Give every decrypted RTP packet of ``dtls`` to ``handler`` as bytes,
    instead of aiortc's parse-and-route (so no RTCRtpReceiver is involved)."""

    async def _handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        try:
            handler(data)
        except Exception:  # an exception here would end the transport's receive loop
            logger.exception("RTP handler failed")

    dtls._handle_rtp_data = _handle_rtp_data  # type: ignore[method-assign]


def tap_rtcp(dtls: RTCDtlsTransport, take: Callable[[bytes], bytes]) -> None:
    """Give every decrypted compound RTCP packet of ``dtls`` to ``take`` first;
    what it returns (the packets it did not consume) goes on to aiortc's parse
    and route."""
    original = dtls._handle_rtcp_data

    async def _handle_rtcp_data(data: bytes) -> None:
        try:
            rest = take(data)
        except Exception:  # an exception here would end the transport's receive loop
            logger.exception("RTCP tap failed")
            rest = data
        if rest:
            await original(rest)

    dtls._handle_rtcp_data = _handle_rtcp_data  # type: ignore[method-assign]


def register_rtcp_sink(dtls: RTCDtlsTransport, ssrc: int, sink: Any) -> None:
    """Route RTCP feedback whose media SSRC is ``ssrc`` (NACK, PLI, RR reports
    about it) to ``sink._handle_rtcp_packet(packet)``."""
    dtls._rtp_router.register_sender(sink, ssrc)


def register_rtcp_source(dtls: RTCDtlsTransport, ssrcs: list[int], sink: Any) -> None:
    """Route RTCP sent by the remote about its own SSRCs (SR, BYE) to ``sink``.
    ``sink`` also needs ``_handle_disconnect()``."""
    dtls._rtp_router.register_receiver(sink, ssrcs=ssrcs, payload_types=[], mid=None)


def unregister_rtcp(dtls: RTCDtlsTransport, sink: Any) -> None:
    dtls._rtp_router.unregister_sender(sink)
    dtls._rtp_router.unregister_receiver(sink)


# --- sending ----------------------------------------------------------------------


class DatagramSender:
    """Protect with the transport's SRTP session and write to the nominated
    pair's socket: two C calls, no coroutine, no aiortc object per packet."""

    __slots__ = ("_dtls", "pair", "protect", "protect_rtcp", "sendto", "addr")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self.refresh()

    def _nominated(self) -> aioice_ice.CandidatePair | None:
        # read through the ICE transport: an ICE restart replaces its connection
        return self._dtls.transport._connection._nominated.get(1)

    def refresh(self) -> bool:
        """Rebind to the current nominated pair; False when there is none."""
        srtp = self._dtls._tx_srtp
        pair = self._nominated()
        if srtp is None or pair is None or pair.protocol.transport is None:
            self.pair = None
            self.protect = self.protect_rtcp = None
            self.sendto = None
            self.addr = None
            return False
        self.pair = pair
        self.protect = srtp.protect
        self.protect_rtcp = srtp.protect_rtcp
        self.sendto = pair.protocol.transport.sendto
        self.addr = pair.remote_addr
        return True

    def stale(self) -> bool:
        return self._nominated() is not self.pair

    def send_rtp(self, packet: bytes) -> None:
        if self.sendto is not None:
            self.sendto(self.protect(packet), self.addr)

    def send_rtcp(self, packet: bytes) -> None:
        if self.sendto is not None:
            self.sendto(self.protect_rtcp(packet), self.addr)


def set_dtls_role(dtls: RTCDtlsTransport, role: str) -> None:
    dtls._set_role(role)


def dtls_role(dtls: RTCDtlsTransport) -> str:
    return dtls._role


async def stop_dtls(dtls: RTCDtlsTransport) -> None:
    """Stop the DTLS transport and wait for its receive task to end."""
    task = dtls._task
    await dtls.stop()
    if task is not None:
        try:
            await task
        except BaseException:  # noqa: BLE001 - cancelled or failed, it is gone either way
            pass


def set_ice_controlling(ice: RTCIceTransport, controlling: bool) -> None:
    ice._connection.ice_controlling = controlling


# --- gathering: addresses and port range --------------------------------------------


def restrict_gathering(
    ice: RTCIceTransport,
    addresses: tuple[str, ...],
    ports: tuple[int, int] | None,
) -> None:
    """Bind host candidates only on ``addresses`` (when given; aioice never
    gathers 127.0.0.1 by itself) and only on ``ports`` (lo, hi) when given."""
    _restrict_gathering(ice._connection, addresses, ports)


def _restrict_gathering(
    connection: aioice_ice.Connection,
    addresses: tuple[str, ...],
    ports: tuple[int, int] | None,
) -> None:
    original = connection.get_component_candidates
    configured = addresses
    _gather_without_listing(connection, listing=not configured)

    async def get_component_candidates(
        component: int,
        addresses: list[str],
        timeout: int = 5,  # noqa: ASYNC109 - aioice signature
    ) -> list[Candidate]:
        use = list(configured) if configured else list(addresses)
        if ports is None and not configured:
            return await original(component=component, addresses=use, timeout=timeout)
        loop = asyncio.get_running_loop()
        candidates = []
        for address in use:
            protocol = await _bind(loop, connection, address, ports)
            if protocol is None:
                continue
            host, port = protocol.transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=port,
                type="host",
            )
            connection._protocols.append(protocol)
            candidates.append(protocol.local_candidate)
        return candidates

    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


HOST_ADDRESSES_TTL = 5.0  # seconds a listing of the machine's addresses serves gatherings
# (use_ipv4, use_ipv6) -> (when listed, the addresses)
_listings: dict[tuple[bool, bool], tuple[float, list[str]]] = {}


def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's listing of the machine's addresses (an ifaddr getifaddrs walk: 0.65 ms
    here, more with many interfaces), taken again at most every HOST_ADDRESSES_TTL."""
    now = time.monotonic()
    listed = _listings.get((use_ipv4, use_ipv6))
    if listed is None or now - listed[0] > HOST_ADDRESSES_TTL:
        listed = _listings[use_ipv4, use_ipv6] = (now, aioice_ice.get_host_addresses(use_ipv4, use_ipv6))
    return list(listed[1])


def _gather_without_listing(connection: aioice_ice.Connection, *, listing: bool) -> None:
    """aioice's ``gather_candidates`` without listing the machine's interfaces
    at every gathering (40 % of the CPU of answering a call party's offer):
    with configured addresses our ``get_component_candidates`` binds those
    and needs no listing; without, a listing serves for HOST_ADDRESSES_TTL."""

    async def gather_candidates() -> None:
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        addresses: list[str] = []
        if listing and connection._transport_policy == aioice_ice.TransportPolicy.ALL:
            addresses = host_addresses(connection._use_ipv4, connection._use_ipv6)
        coros = [
            connection.get_component_candidates(component=component, addresses=addresses)
            for component in connection._components
        ]
        for candidates in await asyncio.gather(*coros):
            connection._local_candidates += candidates
        connection._local_candidates_end = True

    connection.gather_candidates = gather_candidates  # type: ignore[method-assign]


async def _bind(
    loop: asyncio.AbstractEventLoop,
    connection: aioice_ice.Connection,
    address: str,
    ports: tuple[int, int] | None,
) -> aioice_ice.StunProtocol | None:
    if ports is None:
        candidates_ports = [0]
    else:
        lo, hi = ports
        span = hi - lo + 1
        start = random.randrange(span)
        candidates_ports = [lo + (start + i) % span for i in range(span)]
    for port in candidates_ports:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: aioice_ice.StunProtocol(connection), local_addr=(address, port)
            )
        except OSError:
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
            except OSError:
                pass
        return protocol  # type: ignore[return-value]
    logger.warning("no free UDP port on %s in %s", address, ports)
    return None


# --- consent freshness ----------------------------------------------------------------


class InboundCounter:
    """Inbound datagrams and checks seen; ``hold`` keeps consent from expiring
    (while an ICE restart looks for a new path, the old one may be dead)."""

    __slots__ = ("count", "hold")

    def __init__(self) -> None:
        self.count = 0
        self.hold = False


def count_inbound_as_consent(ice: RTCIceTransport) -> InboundCounter:
    """RFC 7675 expires consent after unanswered checks; FFmpeg's WHIP client
    never answers them but keeps sending its own checks and media. Replace
    aioice's consent loop by one that also treats any inbound datagram since
    the previous check as fresh consent."""
    counter = InboundCounter()
    _count_inbound_as_consent(ice._connection, counter)
    return counter


def _count_inbound_as_consent(connection: aioice_ice.Connection, counter: InboundCounter) -> None:
    data_received = connection.data_received
    request_received = connection.request_received

    def on_data(data: bytes, component: int) -> None:
        counter.count += 1
        data_received(data, component)

    def on_request(message: Any, addr: Any, protocol: Any) -> None:
        counter.count += 1
        request_received(message, addr, protocol)

    async def query_consent() -> None:
        assert connection.remote_password is not None
        failures = 0
        seen = counter.count
        while True:
            interval = aioice_ice.CONSENT_INTERVAL
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
            for pair in list(connection._nominated.values()):
                request = connection.build_request(pair, nominate=False)
                try:
                    await pair.protocol.request(
                        request,
                        pair.remote_addr,
                        integrity_key=connection.remote_password.encode("utf8"),
                        retransmissions=0,
                    )
                    failures = 0
                except stun.TransactionError:
                    failures += 1
            if counter.count != seen:
                failures = 0
                seen = counter.count
            if failures >= aioice_ice.CONSENT_FAILURES and not counter.hold:
                logger.info("ICE consent expired (no answer and no inbound traffic)")
                connection._query_consent_task = None
                await connection.close()
                return

    connection.data_received = on_data  # type: ignore[method-assign]
    connection.request_received = on_request  # type: ignore[method-assign]
    connection.query_consent = query_consent  # type: ignore[method-assign]


# --- ICE restart ------------------------------------------------------------------------


class IceRestart:
    """An ICE restart under a live :class:`RTCIceTransport` (aioice has none).

    A second aioice connection with new local and remote credentials is
    gathered, checked and nominated beside the first one, then
    :meth:`install` swaps it in under the transport; the DTLS transport above
    keeps its association and SRTP contexts (no new handshake).

    How the swap keeps the DTLS receive loop: the loop awaits
    ``transport._recv()`` (the old connection's ``recv``), which awaits the
    old connection's queue. The new connection is given that same queue from
    the start, so the pending read gets datagrams from either path, with none
    lost while both live; :meth:`install` points ``_recv``/``_send`` at the new
    connection, moves the transport's event waiter over (closing the old
    connection must not fail the transport) and gives the old connection a
    queue of its own before closing it (its ``None`` wakes nobody)."""

    def __init__(
        self,
        ice: RTCIceTransport,
        addresses: tuple[str, ...],
        ports: tuple[int, int] | None,
        consent: InboundCounter | None = None,
    ) -> None:
        old = ice._connection
        self._ice = ice
        self._candidates_end = False
        self.connection = aioice_ice.Connection(ice_controlling=old.ice_controlling)
        self.connection._queue = old._queue
        _restrict_gathering(self.connection, addresses, ports)
        if consent is not None:
            _count_inbound_as_consent(self.connection, consent)

    async def gather(self) -> None:
        await self.connection.gather_candidates()

    def local_parameters(self) -> RTCIceParameters:
        return RTCIceParameters(
            usernameFragment=self.connection.local_username,
            password=self.connection.local_password,
        )

    def local_candidates(self) -> list[RTCIceCandidate]:
        return [candidate_from_aioice(c) for c in self.connection.local_candidates]

    def set_remote(self, parameters: RTCIceParameters) -> None:
        self.connection.remote_username = parameters.usernameFragment
        self.connection.remote_password = parameters.password
        self.connection.remote_is_lite = parameters.iceLite

    @property
    def remote_username(self) -> str | None:
        return self.connection.remote_username

    @property
    def has_remote_candidates(self) -> bool:
        return bool(self.connection._remote_candidates)

    async def add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        """A remote candidate of the new generation, or None for its end."""
        if self._candidates_end:
            return
        if candidate is None:
            self._candidates_end = True
            await self.connection.add_remote_candidate(None)
        else:
            await self.connection.add_remote_candidate(candidate_to_aioice(candidate))

    async def connect(self) -> None:
        """Check and nominate; ConnectionError when no pair works."""
        await self.connection.connect()

    async def install(self, swapped: Callable[[], None]) -> None:
        """Swap the checked connection in under the transport, call ``swapped``
        (senders rebind to the new pair), then close the old connection."""
        ice, new = self._ice, self.connection
        old = ice._connection
        new._event_waiter, old._event_waiter = old._event_waiter, None
        ice._connection = new
        ice.iceGatherer._connection = new
        ice.iceGatherer._remote_candidates_end = self._candidates_end
        ice._recv = new.recv
        ice._send = new.send
        swapped()
        old._queue = asyncio.Queue()
        await old.close()

    async def abandon(self) -> None:
        """Close the new connection; the transport keeps its current one."""
        self.connection._queue = asyncio.Queue()
        await self.connection.close()


def remote_username(ice: RTCIceTransport) -> str | None:
    """The remote ufrag the transport's current connection checks against."""
    return ice._connection.remote_username

__all__ = [
    "DatagramSender",
    "IceRestart",
    "InboundCounter",
    "count_inbound_as_consent",
    "dtls_role",
    "register_rtcp_sink",
    "register_rtcp_source",
    "remote_username",
    "restrict_gathering",
    "set_dtls_role",
    "set_ice_controlling",
    "stop_dtls",
    "tap_rtcp",
    "tap_rtp",
    "unregister_rtcp",
]
