"""Go live in one browser page, watch it in another: WHIP and WHEP from real Chromium,
the audience count, chat and a gift across the two pages, and the end of the stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from api.components import AIRWAVE
from config import Settings
from tests.conftest import start_app

from .browser import (
    chromium,
    ensure_socket_io_bundle,
    new_page,
    screenshot,
    sign_in,
    text_of,
    until,
)

FRAMES_DECODED = """async () => {
  const session = window.airwave && window.airwave.watching;
  if (!session) return 0;
  let frames = 0;
  (await session.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
  });
  return frames;
}"""


async def test_go_live_and_watch_with_chat_and_gifts(make_settings: Callable[..., Settings]) -> None:
    ensure_socket_io_bundle()
    running = await start_app(make_settings(dev=True))
    errors: list[str] = []
    try:
        async with asyncio.timeout(60):
            async with chromium() as browser:
                url = running.url
                live = await new_page(browser, url, errors)
                await sign_in(live, url, "Alice", "#/live")
                await live.wait_for_function("() => (document.querySelector('#preview') || {}).videoWidth > 0")
                await live.fill("#room-title", "Alice in the browser")
                await live.click("#go-live")
                await live.wait_for_selector("#live-badge[data-room-id]")
                room_id = await live.get_attribute("#live-badge", "data-room-id")
                assert await text_of(live, "#live-badge") == "LIVE"

                viewer = await new_page(browser, url, errors)
                await sign_in(viewer, url, "Bob", "#/watch")
                card = await viewer.wait_for_selector(f"[data-room-id='{room_id}']")
                assert "Alice in the browser" in await card.inner_text()
                await screenshot(viewer, "watch-list")
                await card.click()

                # the <video> plays: it has a size, and frames keep being decoded
                await viewer.wait_for_function("() => (document.querySelector('#remote') || {}).videoWidth > 0")
                first = await viewer.evaluate(FRAMES_DECODED)
                await until(lambda: _more_frames(viewer, first + 10), 10, "framesDecoded to grow")

                await until(lambda: _is(live, "#viewer-count", "1"), 10, "the broadcaster to see 1 viewer")

                # the server pauses the viewer's video (as when not even the lowest layer fits
                # its link; the estimate is held still here) and resumes it: the page says so
                location = await viewer.evaluate("window.airwave.watching.location")
                session = running.app[AIRWAVE].media.session(location.rsplit("/", 1)[1])
                down = next(d for d in session.downtracks if d.up.kind == "video")
                down.adapt = lambda *_, **__: None
                down.switch_to(-1)
                await viewer.wait_for_selector("#video-paused:has-text('connection is too slow')")
                await screenshot(viewer, "watch-video-paused")
                down.switch_to(down.up.start_layer(None).index)  # the highest layer flowing
                await viewer.wait_for_selector("#video-paused", state="hidden")

                await viewer.fill("#chat-input", "hello from Bob")
                await viewer.click("#chat-send")
                line = await live.wait_for_selector("#chat-log .chat-line:has-text('hello from Bob')")
                assert "bob" in (await line.inner_text()).lower()

                await until(lambda: _is(viewer, "#coins", "100"), 10, "the viewer's welcome coins")
                await viewer.click("[data-gift='heart']")
                await live.wait_for_selector("#gift-feed .gift-line:has-text('Heart')")
                await until(lambda: _is(viewer, "#coins", "95"), 10, "the viewer's coins to go down by 5")
                await until(lambda: _is(live, "#earnings", "3"), 10, "the broadcaster to earn 60% of 5")
                await viewer.wait_for_selector("#leaderboard li:has-text('5 coins')")
                assert await _wallet(running.url, viewer) == {"coins": 95, "earnings": 0}

                await screenshot(live, "go-live")
                await screenshot(viewer, "watch")

                # a gift the wallet cannot pay is refused in words, and moves nothing
                await viewer.click("[data-gift='rocket']")
                await viewer.wait_for_selector("#notice:not([hidden]):has-text('Not enough coins')")
                assert await text_of(viewer, "#coins") == "95"
                await screenshot(viewer, "watch-not-enough-coins")

                await live.click("#end-stream")
                await viewer.wait_for_selector("#ended:has-text('This stream has ended')")
                await live.wait_for_selector("#live-badge:has-text('Ended')")
                await screenshot(viewer, "watch-ended")
        assert not errors, errors
    finally:
        await running.server.close()


async def _is(page, selector: str, text: str) -> bool:
    return await text_of(page, selector) == text


async def _more_frames(page, than: int) -> bool:
    return await page.evaluate(FRAMES_DECODED) > than


async def _wallet(url: str, page) -> dict:
    token = await page.evaluate("JSON.parse(sessionStorage.getItem('airwave.session')).token")
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/api/v1/wallet", headers={"Authorization": f"Bearer {token}"}) as r:
            return await r.json()
