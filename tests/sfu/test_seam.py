"""The aiortc/aioice internals sfu/aiortc_seam.py relies on. If aiortc or
aioice changes one of them, this fails here, by name, before anything else."""

from __future__ import annotations

import asyncio
import inspect

import aioice.candidate
import aioice.ice
import aioice.stun
import pytest
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, RtpRouter
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, RtcpSenderInfo, RtcpSrPacket

from sfu import aiortc_seam as seam


def _transports():
    gatherer = RTCIceGatherer(iceServers=[])
    ice = RTCIceTransport(gatherer)
    dtls = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])
    return gatherer, ice, dtls


def _source(obj) -> str:
    return inspect.getsource(obj)


_aioice_listing = aioice.ice.get_host_addresses  # before tests/conftest.py's loopback patch


def test_versions_are_the_pinned_ones():
    import aioice
    import aiortc

    assert aiortc.__version__.startswith("1.16"), aiortc.__version__
    assert aioice.__version__.startswith("0.13"), aioice.__version__


async def test_dtls_transport_internals():
    _, ice, dtls = _transports()
    # raw RTP: the receive loop calls the instance attribute with (data, arrival_time_ms)
    assert inspect.iscoroutinefunction(RTCDtlsTransport._handle_rtp_data)
    assert list(inspect.signature(RTCDtlsTransport._handle_rtp_data).parameters) == [
        "self",
        "data",
        "arrival_time_ms",
    ]
    recv_next = _source(RTCDtlsTransport._recv_next)
    assert "self._rx_srtp.unprotect(data)" in recv_next
    assert "await self._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" in recv_next
    assert "await self._handle_rtcp_data(data)" in recv_next
    assert "data = await self.transport._recv()" in recv_next
    # sending and the DTLS role
    assert dtls._tx_srtp is None and dtls._task is None
    seam.set_dtls_role(dtls, "server")
    assert seam.dtls_role(dtls) == "server" and dtls._role == "server"
    assert "self._tx_srtp = Session(tx_policy)" in _source(RTCDtlsTransport._setup_srtp)
    assert "tx_policy.allow_repeat_tx = True" in _source(RTCDtlsTransport._setup_srtp)
    assert "self._task = None" in _source(RTCDtlsTransport.stop)
    # the tap replaces the instance attribute and hands bytes over
    got = []
    seam.tap_rtp(dtls, got.append)
    await dtls._handle_rtp_data(b"\x80" * 20, arrival_time_ms=0)
    assert got == [b"\x80" * 20]
    # ICE transport and its aioice connection
    assert isinstance(ice._connection, aioice.ice.Connection)
    assert ice._recv == ice._connection.recv
    await ice.stop()


async def test_rtp_router_routes_feedback_to_our_sinks():
    _, ice, dtls = _transports()
    router = dtls._rtp_router
    assert isinstance(router, RtpRouter)

    class Sink:
        def _handle_disconnect(self) -> None:
            pass

    down, fir, source = Sink(), Sink(), Sink()
    seam.register_rtcp_sink(dtls, 1234, down)
    seam.register_rtcp_sink(dtls, 0, fir)
    seam.register_rtcp_source(dtls, [5678], source)
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=1234)
    assert router.route_rtcp(pli) == {down}
    fir_packet = RtcpPsfbPacket(
        fmt=RTCP_PSFB_FIR, ssrc=1, media_ssrc=0, fci=b"\x00\x00\x04\xd2\x01\x00\x00\x00"
    )
    assert router.route_rtcp(fir_packet) == {fir}
    sr = RtcpSrPacket(ssrc=5678, sender_info=RtcpSenderInfo(0, 0, 0, 0))
    assert router.route_rtcp(sr) == {source}
    seam.unregister_rtcp(dtls, down)
    seam.unregister_rtcp(dtls, source)
    assert router.route_rtcp(pli) == set() and router.route_rtcp(sr) == set()
    # the transport tells registered receivers about a disconnect
    assert "receiver._handle_disconnect()" in _source(RTCDtlsTransport._RTCDtlsTransport__run)
    await ice.stop()


def test_aioice_connection_internals():
    conn = aioice.ice.Connection(ice_controlling=False)
    for name in (
        "_nominated",
        "_protocols",
        "_query_consent_task",
        "_remote_candidates",
        "remote_password",
        "ice_controlling",
    ):
        assert hasattr(conn, name), name
    params = inspect.signature(aioice.ice.Connection.get_component_candidates).parameters
    assert list(params)[:3] == ["self", "component", "addresses"]
    assert "self.get_component_candidates(component=component, addresses=addresses)" in _source(
        aioice.ice.Connection.gather_candidates
    )
    assert "asyncio.create_task(self.query_consent())" in _source(aioice.ice.Connection.connect)
    consent = _source(aioice.ice.Connection.query_consent)
    assert "CONSENT_INTERVAL" in consent and "CONSENT_FAILURES" in consent
    assert "return await self.close()" in consent
    assert isinstance(aioice.ice.CONSENT_INTERVAL, (int, float))
    assert isinstance(aioice.ice.CONSENT_FAILURES, int)
    datagram = _source(aioice.ice.StunProtocol.datagram_received)
    assert "self.receiver.data_received(data, self.local_candidate.component)" in datagram
    assert "self.receiver.request_received(message, addr, self)" in datagram
    assert list(inspect.signature(aioice.ice.Connection.build_request).parameters) == [
        "self",
        "pair",
        "nominate",
    ]
    pair_attrs = _source(aioice.ice.CandidatePair)
    assert "self.protocol = protocol" in pair_attrs and "def remote_addr" in pair_attrs
    # (StunProtocol.send_data itself is wrapped by the loopback guard in tests)
    assert "self.transport.sendto(data, addr)" in _source(aioice.ice)
    assert callable(aioice.candidate.candidate_foundation)
    assert callable(aioice.candidate.candidate_priority)
    assert issubclass(aioice.stun.TransactionTimeout, aioice.stun.TransactionError)


async def test_restricted_gathering_binds_configured_address_and_ports():
    gatherer, ice, _ = _transports()
    seam.restrict_gathering(ice, ("127.0.0.1",), (47200, 47209))
    await gatherer.gather()
    candidates = gatherer.getLocalCandidates()
    assert [(c.ip, c.type) for c in candidates] == [("127.0.0.1", "host")]
    assert 47200 <= candidates[0].port <= 47209
    assert len(ice._connection._protocols) == 1
    await ice.stop()
    assert ice._connection._protocols == []


def test_gathering_internals():
    # what the replacement of gather_candidates for configured addresses does
    # in aioice's place (its listing aside); aiortc calls the instance attribute
    conn = aioice.ice.Connection(ice_controlling=False)
    assert conn._local_candidates_start is False and conn._local_candidates_end is False
    assert conn._local_candidates == [] and list(conn._components) == [1]
    assert conn._transport_policy == aioice.ice.TransportPolicy.ALL
    assert conn._use_ipv4 is True and conn._use_ipv6 is True
    source = _source(aioice.ice.Connection.gather_candidates)
    for step in (
        "if not self._local_candidates_start:",
        "self._local_candidates_start = True",
        "addresses = get_host_addresses(",
        "for component in self._components",
        "self._local_candidates += candidates",
        "self._local_candidates_end = True",
    ):
        assert step in source, step
    assert "await self._connection.gather_candidates()" in _source(RTCIceGatherer.gather)


async def test_configured_addresses_gather_without_listing_interfaces(monkeypatch):
    listings = []
    get_adapters = aioice.ice.ifaddr.get_adapters

    def counted(*args, **kwargs):
        listings.append(1)
        return get_adapters(*args, **kwargs)

    monkeypatch.setattr(aioice.ice.ifaddr, "get_adapters", counted)
    monkeypatch.setattr(aioice.ice, "get_host_addresses", _aioice_listing)
    # aioice's own gathering lists the interfaces
    gatherer, ice, _ = _transports()
    await gatherer.gather()
    await ice.stop()
    assert listings == [1]
    # configured addresses: no listing, the configured address only, gathered once
    gatherer, ice, _ = _transports()
    seam.restrict_gathering(ice, ("127.0.0.1",), None)
    await gatherer.gather()
    await gatherer.gather()
    assert [(c.ip, c.component) for c in gatherer.getLocalCandidates()] == [("127.0.0.1", 1)]
    assert ice._connection._local_candidates_end
    assert len(ice._connection._protocols) == 1
    await ice.stop()
    assert listings == [1]


async def test_without_configured_addresses_one_listing_serves_gatherings_for_a_while(monkeypatch):
    listings = []

    def listing(use_ipv4, use_ipv6):
        listings.append((use_ipv4, use_ipv6))
        return ["127.0.0.1"]

    monkeypatch.setattr(aioice.ice, "get_host_addresses", listing)
    monkeypatch.setattr(seam, "_listings", {})
    for _ in range(3):
        gatherer, ice, _ = _transports()
        seam.restrict_gathering(ice, (), None)
        await gatherer.gather()
        assert [(c.ip, c.type) for c in gatherer.getLocalCandidates()] == [("127.0.0.1", "host")]
        await ice.stop()
    assert len(listings) == 1
    # once the listing is older than HOST_ADDRESSES_TTL, the next gathering lists again
    monkeypatch.setattr(seam, "HOST_ADDRESSES_TTL", 0.0)
    gatherer, ice, _ = _transports()
    seam.restrict_gathering(ice, (), None)
    await gatherer.gather()
    await ice.stop()
    assert len(listings) == 2


async def test_consent_replacement_counts_inbound_traffic():
    _, ice, _ = _transports()
    conn = ice._connection
    counter = seam.count_inbound_as_consent(ice)
    assert "query_consent" in vars(conn) and "data_received" in vars(conn)
    conn.data_received(b"x", 1)
    assert counter.count == 1
    assert await asyncio.wait_for(conn._queue.get(), 1) == (b"x", 1)
    await ice.stop()


def test_ice_restart_internals():
    """What IceRestart relies on to swap a connection under a live transport."""
    import aiortc.rtcicetransport as rtcicetransport

    assert "data = await self.transport._recv()" in _source(RTCDtlsTransport._recv_next)
    assert "await self.transport._send(data)" in _source(RTCDtlsTransport._send_rtp)
    assert "await self.transport._send(data)" in _source(RTCDtlsTransport._write_ssl)
    init = _source(RTCIceTransport.__init__)
    assert "self._connection = gatherer._connection" in init
    assert "self._recv = self._connection.recv" in init and "self._send = self._connection.send" in init
    assert "await self._connection.get_event()" in _source(RTCIceTransport._monitor)
    assert "self._connection.close()" in _source(RTCIceTransport.stop)
    assert "self.__iceGatherer._remote_candidates_end" in _source(RTCIceTransport.addRemoteCandidate)
    assert "self._connection.local_username" in _source(RTCIceGatherer.getLocalParameters)
    assert "self._connection.local_candidates" in _source(RTCIceGatherer.getLocalCandidates)
    assert callable(rtcicetransport.candidate_from_aioice)
    assert callable(rtcicetransport.candidate_to_aioice)
    assert "result = await self._queue.get()" in _source(aioice.ice.Connection.recvfrom)
    close = _source(aioice.ice.Connection.close)
    assert "self._queue.put_nowait(None)" in close and "self._emit_event(ConnectionClosed())" in close
    assert "self._event_waiter" in _source(aioice.ice.Connection.get_event)
    assert "waiter = self._event_waiter" in _source(aioice.ice.Connection._emit_event)
    conn = aioice.ice.Connection(ice_controlling=False)
    assert isinstance(conn._queue, asyncio.Queue) and conn._event_waiter is None


async def _connected_pair() -> tuple[RTCIceTransport, RTCIceTransport]:
    a, b = RTCIceTransport(RTCIceGatherer(iceServers=[])), RTCIceTransport(RTCIceGatherer(iceServers=[]))
    for ice in (a, b):
        seam.restrict_gathering(ice, ("127.0.0.1",), None)
        await ice.iceGatherer.gather()
    a._connection.ice_controlling = True
    for ice, other in ((a, b), (b, a)):
        for candidate in other.iceGatherer.getLocalCandidates():
            await ice.addRemoteCandidate(candidate)
        await ice.addRemoteCandidate(None)
    await asyncio.gather(
        a.start(b.iceGatherer.getLocalParameters()), b.start(a.iceGatherer.getLocalParameters())
    )
    assert a.state == b.state == "completed"
    return a, b


async def test_ice_restart_swaps_the_connection_under_a_pending_read():
    a, b = await _connected_pair()
    old_a, old_b = a._connection, b._connection
    reading = asyncio.ensure_future(b._recv())  # as the DTLS loop does, before the restart
    await asyncio.sleep(0)
    counter = seam.InboundCounter()
    ra = seam.IceRestart(a, ("127.0.0.2",), None)
    rb = seam.IceRestart(b, ("127.0.0.1",), None, counter)
    assert ra.connection.ice_controlling and not rb.connection.ice_controlling
    await asyncio.gather(ra.gather(), rb.gather())
    ra.set_remote(rb.local_parameters())
    rb.set_remote(ra.local_parameters())
    for restart, other in ((ra, rb), (rb, ra)):
        for candidate in other.local_candidates():
            await restart.add_remote_candidate(candidate)
        await restart.add_remote_candidate(None)
    await asyncio.gather(ra.connect(), rb.connect())
    swapped: list[str] = []
    await ra.install(lambda: swapped.append("a"))
    await rb.install(lambda: swapped.append("b"))
    assert swapped == ["a", "b"]
    # the transports now stand on the new connections; the old ones are closed
    assert a._connection is ra.connection and a.iceGatherer._connection is ra.connection
    assert old_a._protocols == [] and old_b._protocols == []
    assert a.iceGatherer.getLocalParameters().usernameFragment == ra.connection.local_username
    assert seam.remote_username(b) == ra.connection.local_username
    # the read begun before the swap gets what the new path carries
    await a._send(b"after the swap")
    assert await asyncio.wait_for(reading, 2) == b"after the swap"
    assert counter.count >= 1  # consent counting follows the new connection
    assert b._connection._nominated[1].remote_addr[0] == "127.0.0.2"
    # closing the old connections did not fail the transports
    await asyncio.sleep(0.05)
    assert a.state == b.state == "completed"
    await a.stop()
    await b.stop()
    assert a.state == b.state == "closed"


def test_datagram_sender_needs_srtp_and_a_pair():
    _, ice, dtls = _transports()
    sender = seam.DatagramSender(dtls)
    assert sender.sendto is None and not sender.refresh()
    sender.send_rtp(b"ignored")  # no pair yet: dropped, no error


@pytest.mark.parametrize("name", ["get_decoder", "get_encoder"])
def test_codec_factories_exist(name):
    # the forwarding tests count these to prove the server never makes a codec
    import aiortc.codecs

    assert callable(getattr(aiortc.codecs, name))
