"""A real Chromium WHEP viewer (the web app's whip.js) calls pc.restartIce() and
PATCHes the new credentials (RFC 9725 section 4.4.1): frames keep decoding,
the selected pair moves to the server's new socket, and no DTLS handshake
happens again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport

from api.components import AIRWAVE
from config import Settings
from tests.conftest import start_app
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, wait_for
from tests.sfu.sfu_restart import nominated_pair
from tests.webapp.browser import chromium, new_page, until

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

# The web app's own WHEP client (api/static/js/whip.js) on a page of the server's origin.
VIEWER = """async ({room, token}) => {
  const { session } = await import("/static/js/session.js");
  session.token = token;
  const { watch } = await import("/static/js/whip.js");
  window.viewer = await watch(room, () => {});
}"""

# What the web app does when ICE fails: MediaSession.restartIce() (restartIce, PATCH, the answer's new ICE).
RESTART = "async () => [await window.viewer.restartIce('test'), window.viewer.pc.signalingState]"

STATS = """async () => {
  const out = {frames: 0, pair: null, dtls: null, ufrag: null};
  const stats = await window.viewer.pc.getStats();
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") out.frames += r.framesDecoded || 0;
    if (r.type === "transport") {
      out.dtls = r.dtlsState;
      const pair = stats.get(r.selectedCandidatePairId);
      const remote = pair && stats.get(pair.remoteCandidateId);
      out.pair = remote ? `${remote.address}:${remote.port}` : null;
      out.ufrag = r.iceLocalUsernameFragment || null;
    }
  });
  return out;
}"""


async def test_chromium_viewer_restarts_ice_and_keeps_decoding(make_settings: Callable[..., Settings],
                                                                monkeypatch) -> None:
    handshakes: list[RTCDtlsTransport] = []
    setup = RTCDtlsTransport._setup_srtp

    def counted(self: RTCDtlsTransport) -> None:
        handshakes.append(self)
        setup(self)

    monkeypatch.setattr(RTCDtlsTransport, "_setup_srtp", counted)
    running = await start_app(make_settings())
    engine = running.app[AIRWAVE].media
    publisher = Publisher([PacketTrack("video", encoded_vp8(60))])
    errors: list[str] = []
    try:
        async with asyncio.timeout(60), aiohttp.ClientSession() as http:
            token = running.token("bob", room="cr", publish=True)
            async with http.post(f"{running.url}/whip/cr", data=await publisher.offer(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                await publisher.accept(await r.text())
            await wait_for(lambda: engine.rooms().get("cr") is not None and engine.rooms()["cr"].live, 10)
            async with chromium(grant_media=False) as browser:
                page = await new_page(browser, running.url, errors)
                await page.goto(f"{running.url}/health/liveness")
                await page.evaluate(VIEWER, {"room": "cr", "token": running.token("ann", room="cr", subscribe=True)})
                await until(lambda: _frames_over(page, 20), 15, "frames to decode")
                before = await page.evaluate(STATS)
                (session,) = [s for s in engine._sessions.values() if s.role == "subscriber"]
                server_path, dtls, shaken = nominated_pair(session.ice), session.dtls, len(handshakes)

                assert await page.evaluate(RESTART) == [True, "stable"]
                await until(lambda: _moved(page, before["pair"]), 10, "the selected pair to move")
                await until(lambda: _frames_over(page, before["frames"] + 30), 3, "frames to keep decoding")
                after = await page.evaluate(STATS)
                assert after["dtls"] == "connected" and after["ufrag"] != before["ufrag"]
                await wait_for(lambda: nominated_pair(session.ice) != server_path, 3)
                assert engine.session(session.id) is session and session.dtls is dtls
                assert len(handshakes) == shaken
        assert errors == []
    finally:
        await publisher.close()
        await running.server.close()


async def _frames_over(page, n: int) -> bool:  # type: ignore[no-untyped-def]
    return (await page.evaluate(STATS))["frames"] > n


async def _moved(page, pair: str) -> bool:  # type: ignore[no-untyped-def]
    now = (await page.evaluate(STATS))["pair"]
    return bool(now) and now != pair
