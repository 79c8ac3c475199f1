"""The server cannot be made to send STUN anywhere an offer names: remote
candidates are capped and filtered, and a session created with a token is
trickled to and ended only with it (issue 15.7)."""

from __future__ import annotations

import ipaddress

import aiohttp
from aiortc import RTCIceCandidate

from api.components import AIRWAVE
from config import Settings
from sfu.candidates import CandidatePolicy
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher

SDP = "application/sdp"
FRAG = "application/trickle-ice-sdpfrag"
DENIED = ["0.0.0.0", "224.0.0.251", "255.255.255.255", "169.254.10.10", "fe80::1", "ff02::1"]


def _candidate(ip: str, port: int) -> RTCIceCandidate:
    return RTCIceCandidate(
        component=1, foundation="1", ip=ip, port=port, priority=1, protocol="udp", type="host"
    )


def _line(ip: str, port: int) -> str:
    return f"a=candidate:9 1 udp 100 {ip} {port} typ host"


def _with_candidates(sdp: str, lines: list[str]) -> str:
    marker = next(line for line in sdp.splitlines() if line.startswith("a=ice-pwd:"))
    return sdp.replace(marker, "\r\n".join([marker, *lines]), 1)


def test_policy_drops_what_points_at_the_server_or_nowhere() -> None:
    own = [_candidate("192.0.2.1", 40000)]
    policy = CandidatePolicy(Settings(ice_addresses=("192.0.2.1",), port=8080, stun_port=3478))
    session = object.__new__(type("FakeSession", (), {}))
    refused = [_candidate(ip, 5000) for ip in (*DENIED, "127.0.0.1", "::1")]
    refused += [_candidate("192.0.2.1", port) for port in (40000, 8080, 3478)]
    assert [c.ip for c in refused if policy.admits(session, c, own)] == []
    for ip in ("10.1.2.3", "192.168.1.20", "172.16.5.5", "203.0.113.9", "192.0.2.1"):
        assert policy.admits(session, _candidate(ip, 50000), own), ip
    # a server that announces loopback (tests, one laptop) checks loopback peers
    loopback = CandidatePolicy(Settings(ice_addresses=("127.0.0.1",)))
    assert loopback.admits(session, _candidate("127.0.0.1", 50001), [_candidate("127.0.0.1", 40001)])
    assert not loopback.admits(session, _candidate("127.0.0.1", 40001), [_candidate("127.0.0.1", 40001)])


async def test_an_offer_naming_hundreds_of_targets_gets_a_few_checked(running: RunningApp) -> None:
    publisher = Publisher([PacketTrack("video", encoded_vp8(10))])
    token = running.token("ann", room="c1", publish=True)
    spam = [_line("127.0.0.1", 20000 + i) for i in range(300)] + [_line(ip, 9) for ip in DENIED]
    offer = _with_candidates(await publisher.offer(), spam)
    engine = running.app[AIRWAVE].media
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": SDP}
        async with http.post(f"{running.url}/whip/c1", data=offer, headers=headers) as r:
            assert r.status == 201, await r.text()
            location = r.headers["Location"]
        (session,) = [s for s in engine.sessions() if s.owner == "ann"]
        checked = session.ice.getRemoteCandidates()
        assert len(checked) == running.settings.max_remote_candidates
        assert not any(ipaddress.ip_address(c.ip).is_multicast for c in checked)
        frag = "\r\n".join(_line("127.0.0.1", 30000 + i) for i in range(5)) + "\r\n"
        async with http.patch(running.url + location, data=frag, headers={"Content-Type": FRAG}) as r:
            assert r.status == 401  # the POST used a token: the URL alone is not enough
            assert set(await r.json()) == {"status", "code", "message", "requestId"}
        async with http.delete(running.url + location) as r:
            assert r.status == 401
        other = {"Authorization": f"Bearer {running.token('eve', room='c1', publish=True)}"}
        async with http.delete(running.url + location, headers=other) as r:
            assert r.status == 403
        same = {"Authorization": f"Bearer {token}", "Content-Type": FRAG}
        async with http.patch(running.url + location, data=frag, headers=same) as r:
            assert r.status == 204
        assert len(session.ice.getRemoteCandidates()) == running.settings.max_remote_candidates  # capped
        async with http.delete(running.url + location, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
    await publisher.close()
