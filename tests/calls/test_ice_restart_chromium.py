"""Two Chromium pages in a call (the web app); the caller's connection restarts
ICE (pc.restartIce() and a new call:sdp_offer from the same RTCPeerConnection):
same session, no new DTLS handshake, both keep decoding, the call goes on."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import aioice.ice
import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport

from api.components import AIRWAVE
from config import Settings
from tests.conftest import start_app
from tests.sfu.sfu_restart import nominated_pair
from tests.webapp.browser import chromium, ensure_socket_io_bundle, new_page, sign_in, until

pytestmark = pytest.mark.parametrize("backend", ["embedded"])


def _this_host(address: str) -> bool:
    """An address of this machine: a datagram to it never leaves the machine."""
    try:
        if ipaddress.ip_address(address).is_loopback:
            return True
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """As tests/conftest.py's, widened to this machine's own addresses: a Chromium
    page with camera access offers them (no mDNS) and, after an ICE restart, may
    nominate a pair on one; the server must be able to answer its checks there."""
    blocked: list[tuple[str, int]] = []
    send_stun, send_data = aioice.ice.StunProtocol.send_stun, aioice.ice.StunProtocol.send_data

    def guarded_send_stun(self: Any, message: Any, addr: tuple[str, int]) -> None:
        if _this_host(addr[0]):
            send_stun(self, message, addr)
        else:
            blocked.append(addr)

    async def guarded_send_data(self: Any, data: bytes, addr: tuple[str, int]) -> None:
        if _this_host(addr[0]):
            await send_data(self, data, addr)
        else:
            blocked.append(addr)

    monkeypatch.setattr(aioice.ice.StunProtocol, "send_stun", guarded_send_stun)
    monkeypatch.setattr(aioice.ice.StunProtocol, "send_data", guarded_send_data)
    return blocked

REMOTE_FRAMES = """async () => {
  const call = window.airwave && window.airwave.call;
  if (!call || !call.connection) return 0;
  let frames = 0;
  (await call.connection.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
  });
  return frames;
}"""

# What the web app does when ICE fails: CallConnection.restartIce() (restartIce and its own offer again).
RESTART = """async () => {
  const connection = window.airwave.call.connection;
  const before = connection.sessionId;
  await connection.restartIce("test");
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
    running = await start_app(make_settings(dev=True, call_duration=60, ring_timeout=15))
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


async def wait_moved(session, path, within: float = 10) -> None:  # type: ignore[no-untyped-def]
    """Until the server's nominated pair is another one (a loaded machine slows Chromium down)."""
    deadline = asyncio.get_running_loop().time() + within
    while nominated_pair(session.ice) == path:
        pending = session._restart
        checks = pending and [(p, p.state, p.remote_nominated) for p in pending.connection._check_list]
        assert asyncio.get_running_loop().time() < deadline, f"the server's path did not move: {checks}"
        await asyncio.sleep(0.05)


async def _frames_above(page, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await page.evaluate(REMOTE_FRAMES) > n
