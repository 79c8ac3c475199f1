"""Issue 18 for calls on a real network: the caller's address changes mid-call (its veth address
moves; its socket reconnects) and the web app restarts ICE through renegotiation (api/static/js/callmedia.js): an offer
with new ICE credentials on the same connection, call:sdp_offer. The server restarts ICE in place:
the same session and DTLS association, media both ways again within 3 s, the call goes on."""

from __future__ import annotations

import asyncio

import pytest

from bench.netlab import Netlab
from bench.shaped import web_app_call
from tests.webapp.browser import ensure_socket_io_bundle

from .conftest import LabAirwave, frames_grow

pytestmark = pytest.mark.netlab

# The caller's WebSocket went with its old address, unnoticed until a write times out: reconnect
# it at once (what an app does on a network change) so that call:sdp_offer reaches the server.
RECONNECT = """async () => {
  const { connection } = await import("/static/js/socket.js");
  const socket = await connection();
  await new Promise((resolve) => { socket.once("connect", resolve); socket.io.engine.close(); });
}"""
CONNECTION = "() => { const c = window.airwave.call.connection; return {sessionId: c.sessionId, closed: c.closed}; }"


@pytest.mark.timeout(180)
async def test_a_call_survives_a_change_of_address_of_one_party(lab: Netlab, airwave: LabAirwave) -> None:
    ensure_socket_io_bundle()
    caller = lab.add_peer("caller")
    callee = lab.add_peer("callee")
    server = await airwave.start(call_duration=0)
    async with web_app_call(lab, server, caller, callee) as (caller_page, callee_page):
        for page in (caller_page, callee_page):
            await frames_grow(page, "call", 15)
        before = await caller_page.evaluate(CONNECTION)
        sample = await caller_page.evaluate("() => window.netlab.latest('call')")
        assert sample["pair"]["local"].startswith(f"{caller.address}:")

        new_address = lab.move_address("caller")
        await caller_page.evaluate(RECONNECT)
        await caller_page.evaluate("() => window.airwave.call.connection.restartIce('test')")
        restarted_at = await caller_page.evaluate("() => performance.now()")

        after = await caller_page.evaluate(CONNECTION)
        assert after == before  # restarted in place: same session, same connection
        for page in (caller_page, callee_page):
            await frames_grow(page, "call", 3)
        for _ in range(40):  # a stats sample taken after the restart
            now = await caller_page.evaluate("() => window.netlab.latest('call')")
            if now["t"] > restarted_at:
                break
            await asyncio.sleep(0.1)
        assert now["pair"]["local"].startswith(f"{new_address}:"), now["pair"]
        assert now["transport"]["id"] == sample["transport"]["id"]
        assert now["transport"]["remoteFingerprint"] == sample["transport"]["remoteFingerprint"]
        assert now["transport"]["dtlsState"] == "connected"
        assert await caller_page.is_hidden("#call-ended") and await callee_page.is_hidden("#call-ended")
