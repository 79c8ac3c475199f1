"""Chromium plays a recording (WebM, VP8 + Opus) through the HTTP file route:
a <video> element on the server's origin loads it with range requests,
decodes frames, and seeks near the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from config import Settings
from tests.api.test_recordings import _live_room, _publish
from tests.conftest import rest, start_app
from tests.webapp.browser import chromium, new_page, until

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

PLAY = """async (src) => {
  const video = document.createElement("video");
  video.muted = true;
  video.src = src;
  document.body.appendChild(video);
  window.recording = video;
  await video.play();
}"""
STATE = """() => {
  const v = window.recording;
  return {time: v.currentTime, duration: v.duration, frames: v.getVideoPlaybackQuality().totalVideoFrames,
          width: v.videoWidth, error: v.error && v.error.message};
}"""


async def test_chromium_plays_and_seeks_a_recording(make_settings: Callable[..., Settings]) -> None:
    running = await start_app(make_settings())
    try:
        room_id = await _live_room(running, public=True)
        publisher = await _publish(running, room_id)
        deadline = time.monotonic() + 10
        while True:
            status, body = await rest(running, "POST", f"/api/v1/rooms/{room_id}/recording", "alice")
            if status == 201:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        await asyncio.sleep(4)
        status, done = await rest(running, "DELETE", f"/api/v1/rooms/{room_id}/recording", "alice")
        await publisher.close()
        assert status == 200 and done["status"] == "complete"

        errors: list[str] = []
        async with chromium(grant_media=False) as browser:
            page = await new_page(browser, running.url, errors)
            await page.set_extra_http_headers({"Authorization": f"Bearer {running.token('bob')}"})
            ranges: list[tuple[int, str]] = []
            page.on("response", lambda r: "/file" in r.url and ranges.append(
                (r.status, r.headers.get("content-range", ""))))
            await page.goto(f"{running.url}/health/liveness")
            await page.evaluate(PLAY, done["fileUrl"])

            async def playing() -> dict | None:
                s = await page.evaluate(STATE)
                return s if s["error"] or (s["frames"] > 20 and s["time"] > 0.5) else None

            state = await until(playing, 15, "frames decoded from the recording")
            assert state["error"] is None and state["width"] == 320, state
            assert abs(state["duration"] - done["duration"]) < 1.0, (state, done)
            await page.evaluate("() => { window.recording.currentTime = window.recording.duration - 0.5; }")

            async def seeked() -> bool:
                return (await page.evaluate(STATE))["time"] >= done["duration"] - 1.0

            await until(seeked, 10, "the seek near the end")
            assert any(status == 206 and content_range.startswith("bytes ") for status, content_range in ranges)
        assert errors == []
    finally:
        await running.server.close()
