"""airwave end to end through a real coturn relay: a relay-only publisher and a
relay-only viewer publish and watch over WHIP/WHEP with credentials airwave
minted, frames decode, and the pairs in use are relay pairs. With credentials
signed by the wrong secret, coturn refuses and nothing connects."""

from __future__ import annotations

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from api.components import AIRWAVE
from tests.conftest import start_app
from tests.sfu import sfu_peers
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, Viewer, wait_for
from tests.turn.test_turn_coturn_interop import nominated_pairs
from tests.turn.turn_testing import CoturnProcess, coturn  # noqa: F401 - fixture

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

SDP = "application/sdp"


async def relay_only(http: aiohttp.ClientSession, url: str, token: str) -> RTCConfiguration:
    """The ICE servers exactly as a client gets them from airwave, relay only."""
    async with http.get(f"{url}/api/v1/ice-servers", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
        servers = (await r.json())["iceServers"]
    assert servers and all(u.startswith("turn:") for s in servers for u in s["urls"])
    return RTCConfiguration(
        iceServers=[RTCIceServer(**s) for s in servers], iceTransportPolicy=RTCIceTransportPolicy.RELAY
    )


async def post(http: aiohttp.ClientSession, url: str, token: str, offer: str) -> tuple[int, str]:
    headers = {"Content-Type": SDP, "Authorization": f"Bearer {token}"}
    async with http.post(url, data=offer, headers=headers) as r:
        return r.status, await r.text()


async def test_publish_and_watch_through_coturn(
    make_settings, coturn: CoturnProcess, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    app = await start_app(make_settings(turn_urls=coturn.url, turn_secrets=coturn.secret))
    engine = app.app[AIRWAVE].media
    pub_token = app.token("bob", room="t1", publish=True)
    view_token = app.token("ann", room="t1", subscribe=True)
    publisher = viewer = None
    try:
        async with aiohttp.ClientSession() as http:
            pub_config = await relay_only(http, app.url, pub_token)
            view_config = await relay_only(http, app.url, view_token)
            monkeypatch.setattr(sfu_peers, "client_pc", lambda: RTCPeerConnection(pub_config))
            publisher = Publisher([PacketTrack("video", encoded_vp8(60))])
            offer = await publisher.offer()
            assert "typ relay" in offer and "typ host" not in offer
            status, answer = await post(http, f"{app.url}/whip/t1", pub_token, offer)
            assert status == 201, answer
            await publisher.accept(answer)
            await wait_for(lambda: engine.rooms().get("t1") is not None and engine.rooms()["t1"].live, 15)

            monkeypatch.setattr(sfu_peers, "client_pc", lambda: RTCPeerConnection(view_config))
            viewer = Viewer()
            status, answer = await post(http, f"{app.url}/whep/t1", view_token, await viewer.offer())
            assert status == 201, answer
            await viewer.accept(answer)
            track = viewer.pc.getReceivers()[0].track
            frame = await track.recv()  # decoded by the viewer's own VP8 decoder
            assert (frame.width, frame.height) == (320, 240)
        for pc in (publisher.pc, viewer.pc):
            pairs = nominated_pairs(pc)
            assert pairs and all(p.local_candidate.type == "relay" for p in pairs)
    finally:
        for peer in (publisher, viewer):
            if peer is not None:
                await peer.close()
        await app.server.close()


async def test_wrong_secret_is_refused_by_coturn(
    make_settings, coturn: CoturnProcess, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    app = await start_app(make_settings(turn_urls=coturn.url, turn_secrets="not-the-secret"))
    publisher = None
    try:
        async with aiohttp.ClientSession() as http:
            token = app.token("bob", room="t2", publish=True)
            config = await relay_only(http, app.url, token)
            monkeypatch.setattr(sfu_peers, "client_pc", lambda: RTCPeerConnection(config))
            publisher = Publisher([PacketTrack("video", encoded_vp8(10))])
            offer = await publisher.offer()
        # coturn refused the allocation: a relay-only client has no candidate at all.
        assert "typ relay" not in offer and "a=candidate" not in offer
    finally:
        if publisher is not None:
            await publisher.close()
        await app.server.close()
