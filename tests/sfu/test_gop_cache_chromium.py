"""A late Chromium viewer starts from the GOP cache: its first frame is
decoded without a keyframe request, right after ICE+DTLS connect (the time
from "connected" to the first frame presented is printed; figures in
docs/media.md). Runs Chromium: serial."""

from __future__ import annotations

import asyncio

from tests.webapp.browser import chromium, until

from .sfu_media import encoded_vp8
from .sfu_peers import PacketTrack, Publisher, wait_for
from .test_rtx_chromium import OFFER

# the page notes when its connection is up and when the first frame is presented
TIMES = """() => {
  const pc = window.pc, video = document.querySelector("video");
  window.times = {};
  const connected = () => {
    if (pc.connectionState === "connected" && !window.times.connected) {
      window.times.connected = performance.now();
    }
  };
  pc.addEventListener("connectionstatechange", connected);
  connected();
  video.requestVideoFrameCallback((now) => { window.times.frame = now; });
}"""


async def test_a_late_chromium_viewer_decodes_the_cached_keyframe_without_a_request(engine):
    frames = await asyncio.to_thread(encoded_vp8, 300)
    track = PacketTrack("video", frames)
    pub = Publisher([track])
    try:
        async with chromium(grant_media=False) as browser:
            page = await browser.new_page()
            offer = await page.evaluate(OFFER)
            # the publisher starts once the browser is up: its one keyframe is fresh
            published = await engine.publish("chromium-gop", await pub.offer())
            await pub.accept(published.answer_sdp)
            up = published.uptracks[0]
            await wait_for(lambda: up.layers[0].gop_seq is not None and len(track.sent) > 15, 5)
            requests_before = (track.keyframe_requests, up.keyframe_requests)
            session = await engine.subscribe("chromium-gop", offer)
            await page.evaluate(TIMES)
            await page.evaluate(
                "sdp => window.pc.setRemoteDescription({type: 'answer', sdp})", session.answer_sdp
            )
            await until(
                lambda: page.evaluate("() => window.times.frame !== undefined"), 10,
                "Chromium presenting a frame",
            )
            # the first frame came from the cache: nobody asked the publisher for one
            assert (track.keyframe_requests, up.keyframe_requests) == requests_before
            down = session.downtracks[0]
            assert down.replayed > 0
            times = await page.evaluate("() => window.times")
            print(f"connected -> first frame presented: {times['frame'] - times['connected']:.0f} ms")
            await page.close()
            await session.close()
    finally:
        await pub.close()
