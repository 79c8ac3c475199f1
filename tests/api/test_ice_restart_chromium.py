"""A real Chromium WHEP viewer calls pc.restartIce() and PATCHes the new
credentials (RFC 9725 section 4.4.1): frames keep decoding, the selected pair
moves to the server's new socket, and no DTLS handshake happens again."""

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

VIEWER = """async ({room, token}) => {
  const gathered = (pc) => new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", {direction: "recvonly"});
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const r = await fetch(`/whep/${room}`, {method: "POST", body: pc.localDescription.sdp,
    headers: {"Content-Type": "application/sdp", "Authorization": `Bearer ${token}`}});
  if (r.status !== 201) throw new Error(`WHEP ${r.status}: ${await r.text()}`);
  await pc.setRemoteDescription({type: "answer", sdp: await r.text()});
  window.viewer = {pc, gathered, url: r.headers.get("Location"), etag: r.headers.get("ETag"), token};
}"""

RESTART = """async () => {
  const v = window.viewer;
  const pc = v.pc;
  pc.restartIce();
  await pc.setLocalDescription(await pc.createOffer());
  await v.gathered(pc);
  const offer = pc.localDescription.sdp;
  const section = offer.slice(offer.indexOf("m="));
  const pick = (re, text) => text.match(re)[1];
  const lines = [
    `a=ice-ufrag:${pick(/a=ice-ufrag:(\\S+)/, section)}`,
    `a=ice-pwd:${pick(/a=ice-pwd:(\\S+)/, section)}`,
    section.split("\\r\\n")[0],
    `a=mid:${pick(/a=mid:(\\S+)/, section)}`,
    ...section.split("\\r\\n").filter((l) => l.startsWith("a=candidate:")),
    "a=end-of-candidates",
  ];
  const r = await fetch(v.url, {method: "PATCH", body: lines.join("\\r\\n") + "\\r\\n",
    headers: {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*",
              "Authorization": `Bearer ${v.token}`}});
  const fragment = await r.text();
  if (r.status !== 200) throw new Error(`PATCH ${r.status}: ${fragment}`);
  // the previous answer with the server's new credentials and candidates
  const candidates = fragment.split("\\r\\n").filter((l) => l.startsWith("a=candidate:"));
  const answer = pc.remoteDescription.sdp.split("\\r\\n")
    .filter((l) => !l.startsWith("a=candidate:") && l !== "a=end-of-candidates")
    .join("\\r\\n")
    .replace(/a=ice-ufrag:\\S+/g, `a=ice-ufrag:${pick(/a=ice-ufrag:(\\S+)/, fragment)}`)
    .replace(/a=ice-pwd:\\S+/g, `a=ice-pwd:${pick(/a=ice-pwd:(\\S+)/, fragment)}\\r\\n`
             + candidates.join("\\r\\n") + "\\r\\na=end-of-candidates");
  await pc.setRemoteDescription({type: "answer", sdp: answer});
  v.etag = r.headers.get("ETag");
  return v.etag;
}"""

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

                etag = await page.evaluate(RESTART)
                assert etag
                await until(lambda: _moved(page, before["pair"]), 3, "the selected pair to move")
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
