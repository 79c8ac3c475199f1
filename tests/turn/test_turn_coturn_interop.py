"""coturn accepts the TURN REST credentials airwave mints, and relays real WebRTC.

Everything runs on 127.0.0.1: a throwaway ``turnserver`` (see turn_testing.py),
``turnutils_uclient`` and two aiortc peers in this process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest
from aioice.ice import get_host_addresses
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from config import Settings
from tests.turn.turn_testing import CoturnProcess, run_uclient
from turn import IceServerProvider, mint_turn_credential

pytestmark = pytest.mark.timeout(90)


def provider_for(turn: CoturnProcess, secrets: tuple[str, ...] | None = None) -> IceServerProvider:
    settings = Settings().with_overrides(
        stun_port=0,
        turn_urls=(turn.url,),
        turn_secrets=secrets or (turn.secret,),
        turn_ttl=600,
    )
    return IceServerProvider(settings)


def assert_allocated(result, what: str) -> None:  # type: ignore[no-untyped-def]
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{what}: turnutils_uclient failed\n{out}"
    assert "tot_recv_msgs=10" in out, f"{what}: no data came back through the relay\n{out}"


def assert_refused(result, what: str) -> None:  # type: ignore[no-untyped-def]
    out = result.stdout + result.stderr
    assert result.returncode != 0, f"{what}: coturn accepted it\n{out}"
    assert "Cannot complete Allocation" in out, out


# --- turnutils_uclient ------------------------------------------------------------


def test_coturn_accepts_minted_credential(coturn: CoturnProcess) -> None:
    cred = provider_for(coturn).credential("alice")
    assert cred is not None
    assert_allocated(run_uclient(coturn.host, coturn.port, cred.username, cred.credential), "fresh")


def test_coturn_refuses_expired_credential(coturn: CoturnProcess) -> None:
    cred = mint_turn_credential(coturn.secret, "alice", 60, now=time.time() - 3600)
    assert cred.expires_at < time.time()
    assert_refused(run_uclient(coturn.host, coturn.port, cred.username, cred.credential), "expired")
    assert f"<{cred.username}>" in coturn.log()


def test_coturn_refuses_wrong_secret(coturn: CoturnProcess) -> None:
    cred = mint_turn_credential("not-" + coturn.secret, "alice", 600)
    assert_refused(run_uclient(coturn.host, coturn.port, cred.username, cred.credential), "wrong")


def test_coturn_refuses_tampered_username(coturn: CoturnProcess) -> None:
    cred = mint_turn_credential(coturn.secret, "alice", 600)
    forged = cred.username.replace(":alice", ":mallory")
    assert_refused(run_uclient(coturn.host, coturn.port, forged, cred.credential), "forged")


def test_rotation_coturn_with_both_secrets_accepts_either() -> None:
    """Rotation step 2: coturn knows old and new; airwave signs with the new (first)."""
    with CoturnProcess(secret="new-secret", extra_secrets=("old-secret",)) as turn:
        new = provider_for(turn, ("new-secret", "old-secret")).credential("bob")
        old = mint_turn_credential("old-secret", "bob", 600)  # minted before the switch
        assert new is not None and new.credential != old.credential
        assert_allocated(run_uclient(turn.host, turn.port, new.username, new.credential), "new")
        assert_allocated(run_uclient(turn.host, turn.port, old.username, old.credential), "old")
        gone = mint_turn_credential("retired-secret", "bob", 600)
        assert_refused(run_uclient(turn.host, turn.port, gone.username, gone.credential), "gone")


# --- two aiortc peers through the relay ---------------------------------------------


def test_aioice_gathers_no_loopback_host_candidate() -> None:
    """Why this works on loopback: aioice skips loopback addresses for host candidates."""
    for address in get_host_addresses(use_ipv4=True, use_ipv6=True):
        assert not ipaddress.ip_address(address.split("%")[0]).is_loopback


def relay_config(provider: IceServerProvider, user: str) -> RTCConfiguration:
    servers = [RTCIceServer(**server) for server in provider.ice_servers(user, None)]
    assert servers and all(str(u).startswith("turn:") for s in servers for u in s.urls)
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY)


def nominated_pairs(pc: RTCPeerConnection) -> list:  # type: ignore[type-arg]
    """aioice's nominated candidate pairs under the (bundled) transport of ``pc``."""
    transports = {t.sender.transport for t in pc.getTransceivers() if t.sender.transport}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    pairs = []
    for dtls in transports:
        connection = dtls.transport._connection  # RTCIceTransport -> aioice.Connection
        pairs += list(connection._nominated.values())
    return pairs


async def test_aiortc_peers_connect_through_coturn_relay(coturn: CoturnProcess) -> None:
    provider = provider_for(coturn)
    caller = RTCPeerConnection(relay_config(provider, "caller"))
    callee = RTCPeerConnection(relay_config(provider, "callee"))
    try:
        channel = caller.createDataChannel("chat")
        caller.addTrack(AudioStreamTrack())
        opened = asyncio.get_running_loop().create_future()
        got_message: asyncio.Queue[str] = asyncio.Queue()
        audio_frames = asyncio.get_running_loop().create_future()

        @channel.on("open")
        def _open() -> None:
            opened.set_result(True)

        @callee.on("datachannel")
        def _datachannel(remote) -> None:  # type: ignore[no-untyped-def]
            @remote.on("message")
            def _message(message: str) -> None:
                got_message.put_nowait(message)

        @callee.on("track")
        def _track(track) -> None:  # type: ignore[no-untyped-def]
            async def count() -> None:
                n = 0
                try:
                    while n < 25:  # half a second of 20 ms Opus frames
                        await track.recv()
                        n += 1
                except MediaStreamError:
                    pass
                if not audio_frames.done():
                    audio_frames.set_result(n)

            asyncio.ensure_future(count())

        await caller.setLocalDescription(await caller.createOffer())
        offer = caller.localDescription.sdp
        await callee.setRemoteDescription(caller.localDescription)
        await callee.setLocalDescription(await callee.createAnswer())
        answer = callee.localDescription.sdp
        await caller.setRemoteDescription(callee.localDescription)

        # Only relay candidates on the wire, all on coturn's loopback relay range.
        for sdp in (offer, answer):
            candidates = [line for line in sdp.splitlines() if line.startswith("a=candidate:")]
            assert candidates, sdp
            for line in candidates:
                parts = line.split()
                assert parts[7] == "relay", line
                assert parts[4] == "127.0.0.1", line
                assert coturn.min_port <= int(parts[5]) <= coturn.max_port, line

        await asyncio.wait_for(opened, 30)
        channel.send("hello through coturn")
        assert await asyncio.wait_for(got_message.get(), 10) == "hello through coturn"
        assert await asyncio.wait_for(audio_frames, 20) == 25

        assert caller.iceConnectionState in ("connected", "completed")
        for pc in (caller, callee):
            pairs = nominated_pairs(pc)
            assert pairs, "no nominated candidate pair"
            for pair in pairs:
                assert pair.local_candidate.type == "relay", pair
                assert pair.remote_candidate.type == "relay", pair
                assert pair.remote_candidate.host == "127.0.0.1", pair
    finally:
        await caller.close()
        await callee.close()
