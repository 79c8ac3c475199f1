"""Two Chromium pages in a call (the web app); the caller's connection restarts
ICE (pc.restartIce() and a new call:sdp_offer from the same RTCPeerConnection):
same session, no new DTLS handshake, both keep decoding, the call goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport

from api.components import AIRWAVE
from config import Settings
from tests.conftest import start_app
from tests.sfu.sfu_restart import nominated_pair
from tests.webapp.browser import chromium, ensure_socket_io_bundle, new_page, sign_in, until

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

REMOTE_FRAMES = """async () => {
  const call = window.airwave && window.airwave.call;
  if (!call || !call.connection) return 0;
  let frames = 0;
  (await call.connection.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
  });
  return frames;
}"""

# What the web app does when ICE fails: CallConnection.restart() (restartIce and its own offer again).
RESTART = """async () => {
  const connection = window.airwave.call.connection;
  const before = connection.sessionId;
  await connection.restart();
  return {before, after: connection.sessionId, state: connection.pc.signalingState};
}"""

async def test_chromium_call_party_restarts_ice_and_the_call_survives(
    make_settings: Callable[..., Settings], monkeypatch
) -> None:
    handshakes: list[RTCDtlsTransport] = []
    setup = RTCDtlsTransport._setup_srtp

    def counted(self: RTCDtlsTransport) -> None:
        handshakes.append(self)
        setup(self)

    monkeypatch.setattr(RTCDtlsTransport, "_setup_srtp", counted)
    ensure_socket_io_bundle()
    running = await start_app(make_settings(call_duration=60, ring_timeout=15))
    engine = running.app[AIRWAVE].media
    errors: list[str] = []
    try:
        async with asyncio.timeout(60), chromium() as browser:
            url = running.url
            caller, callee = await new_page(browser, url, errors), await new_page(browser, url, errors)
            await sign_in(callee, url, "Cleo", "#/call")
            await sign_in(caller, url, "Carl", "#/call")
            button = await caller.wait_for_selector("#online-users li:has-text('Cleo') button")
            await button.click()
            await callee.wait_for_selector("#incoming:not([hidden]) #call-answer")
            await callee.click("#call-answer")
            for page in (caller, callee):
                await until(lambda p=page: _frames_above(p, 10), 15, "remote frames")
            carl = engine.session(await caller.evaluate("() => window.airwave.call.connection.sessionId"))
            path, dtls, shaken = nominated_pair(carl.ice), carl.dtls, len(handshakes)

            result = await caller.evaluate(RESTART)
            assert result["before"] == result["after"] == carl.id and result["state"] == "stable", result
            await wait_moved(carl, path)
            for page in (caller, callee):
                now = await page.evaluate(REMOTE_FRAMES)
                await until(lambda p=page, n=now: _frames_above(p, n + 30), 3, "frames after the restart")
            assert engine.session(carl.id) is carl and carl.dtls is dtls and len(handshakes) == shaken
            assert engine.session_count == 2
            assert await caller.is_hidden("#call-ended") and await callee.is_hidden("#call-ended")
        assert errors == []
    finally:
        await running.server.close()


async def wait_moved(session, path) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + 3
    while nominated_pair(session.ice) == path:
        assert asyncio.get_running_loop().time() < deadline, "the server's path did not move"
        await asyncio.sleep(0.05)


async def _frames_above(page, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await page.evaluate(REMOTE_FRAMES) > n
