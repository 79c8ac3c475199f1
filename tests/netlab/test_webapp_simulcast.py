"""The web app itself (api/static/js) from namespaces: Go live offers the camera as three
simulcast layers (rids q/h/f), the server's answer takes all three, and the browser
sends them at a quarter, half and full size; Watch shows the layer it receives."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench.netlab import Netlab, chromium_in
from tests.webapp.browser import ensure_socket_io_bundle

from .conftest import LabAirwave

pytestmark = pytest.mark.netlab

SENDER_ENCODINGS = """() => window.airwave.publishing.pc.getSenders()
  .filter((s) => s.track && s.track.kind === 'video')
  .map((s) => s.getParameters().encodings.map((e) => ({rid: e.rid, scale: e.scaleResolutionDownBy})))"""
RECEIVED_HEIGHT = """async () => {
  let height = 0;
  (await window.airwave.watching.pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') height = r.frameHeight || 0;
  });
  return height;
}"""


async def signed_in(browser: Any, origin: str, name: str, path: str) -> Any:
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(20_000)
    await page.goto(f"{origin}/{path}")
    await page.fill("#signin-name", name)
    await page.click("#signin-button")
    await page.wait_for_selector("#me-name")
    return page


@pytest.mark.timeout(180)
async def test_go_live_offers_simulcast_and_watch_shows_the_layer(lab: Netlab, airwave: LabAirwave) -> None:
    ensure_socket_io_bundle()
    broadcaster = lab.add_peer("broadcaster")
    viewer = lab.add_peer("viewer")
    server = await airwave.start()
    live_origin, watch_origin = server.url_for(broadcaster), server.url_for(viewer)
    async with chromium_in(broadcaster, secure_origins=(live_origin,)) as live_browser, \
            chromium_in(viewer, secure_origins=(watch_origin,)) as watch_browser:
        live = await signed_in(live_browser, live_origin, "Alice", "#/live")
        offers: list[str] = []
        live.on("request", lambda r: r.method == "POST" and "/whip/" in r.url and offers.append(r.post_data or ""))
        await live.wait_for_function("() => (document.querySelector('#preview') || {}).videoWidth > 0")
        await live.click("#go-live")
        await live.wait_for_selector("#live-badge[data-room-id]")
        room_id = await live.get_attribute("#live-badge", "data-room-id")

        assert len(offers) == 1
        assert re.search(r"^a=simulcast:send q;h;f\r?$", offers[0], re.M), offers[0]
        for rid in ("q", "h", "f"):
            assert re.search(rf"^a=rid:{rid} send\r?$", offers[0], re.M)
        # the answer takes the three layers (a=simulcast:recv q;h;f): each keeps its scale
        assert await live.evaluate(SENDER_ENCODINGS) == [
            [{"rid": "q", "scale": 4}, {"rid": "h", "scale": 2}, {"rid": "f", "scale": 1}]
        ]

        watch = await signed_in(watch_browser, watch_origin, "Bob", f"#/watch/{room_id}")
        badge = await watch.wait_for_selector("#layer-badge:not([hidden])")
        await watch.wait_for_function("() => (document.querySelector('#layer-badge') || {dataset: {}}).dataset.height > 0")
        text = (await badge.inner_text()).strip()
        height = int(await badge.get_attribute("data-height") or 0)
        assert re.fullmatch(rf"{height}p · \d+ fps", text), text
        received = await watch.evaluate(RECEIVED_HEIGHT)
        assert received > 0
