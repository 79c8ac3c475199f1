"""Chromium watches an RTMP stream over WHEP: FFmpeg pushes H.264 Main and
AAC over RTMP, the browser decodes the video and plays the Opus made from
the AAC."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from config import Settings
from tests.api.test_rtmp import Broadcaster
from tests.conftest import free_port, start_app

from .browser import BASE_FLAGS, CHROMIUM, new_page

pytestmark = pytest.mark.parametrize("backend", ["embedded"])  # the media path is the subject

WATCH = """async ([url, token]) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.addTransceiver("audio", {direction: "recvonly"});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
    setTimeout(done, 3000);
  });
  const r = await fetch(url, {method: "POST", body: pc.localDescription.sdp,
    headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + token}});
  if (r.status !== 201) throw new Error("WHEP " + r.status + " " + await r.text());
  await pc.setRemoteDescription({type: "answer", sdp: await r.text()});
  const audio = document.createElement("audio");  // audio is decoded only when it plays
  audio.srcObject = new MediaStream(pc.getReceivers().map((r) => r.track));
  document.body.appendChild(audio);
  await audio.play();
  window.watching = pc;
}"""

STATS = """async () => {
  const out = {frames: 0, width: 0, samples: 0, energy: 0, audioPackets: 0, codecs: []};
  (await window.watching.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      out.frames = r.framesDecoded || 0; out.width = r.frameWidth || 0;
    }
    if (r.type === "inbound-rtp" && r.kind === "audio") {
      out.samples = r.totalSamplesReceived || 0; out.energy = r.totalAudioEnergy || 0;
      out.audioPackets = r.packetsReceived || 0;
    }
    if (r.type === "codec") out.codecs.push(r.mimeType + " " + (r.sdpFmtpLine || ""));
  });
  return out;
}"""


async def test_chromium_decodes_an_rtmp_stream(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    running = await start_app(make_settings(rtmp_port=free_port(), room_publisher_grace=0))
    broadcaster = Broadcaster(running, tmp_path, "chromium")
    errors: list[str] = []
    try:
        async with asyncio.timeout(90):
            token = running.token("alice", room="rtmp-show", publish=True)
            await broadcaster.start(f"live/rtmp-show?key={token}", 25)
            async with async_playwright() as p:
                browser = await p.chromium.launch(
                    executable_path=CHROMIUM, headless=True, timeout=20_000,
                    args=[*BASE_FLAGS, "--autoplay-policy=no-user-gesture-required"])
                try:
                    page = await new_page(browser, running.url, errors)
                    await page.goto(running.url + "/api/v1/openapi.json")  # any page of the server's origin
                    viewer_token = running.token("viewer", room="rtmp-show", subscribe=True)
                    for _ in range(100):  # until the room is live
                        try:
                            await page.evaluate(WATCH, [running.url + "/whep/rtmp-show", viewer_token])
                            break
                        except Exception as exc:  # noqa: BLE001 - 404 until FFmpeg is up
                            assert "WHEP 404" in str(exc), exc
                            await asyncio.sleep(0.2)
                    stats = {}
                    for _ in range(150):
                        stats = await page.evaluate(STATS)
                        if stats["frames"] > 60 and stats["samples"] > 48000 and stats["energy"] > 0:
                            break  # (the video may pass 60 frames before a second of audio is in)
                        await asyncio.sleep(0.1)
                    assert stats["frames"] > 60 and stats["width"] == 320, stats
                    assert stats["samples"] > 48000 and stats["energy"] > 0, stats
                    assert any("H264" in c and "profile-level-id=4d" in c for c in stats["codecs"]), stats
                finally:
                    await browser.close()
        assert not errors, errors
    finally:
        await broadcaster.kill()
        await running.server.close()
