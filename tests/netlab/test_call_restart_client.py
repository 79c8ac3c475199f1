"""The web app's call restarts ICE through renegotiation (api/static/js/callmedia.js): an offer
with new ICE credentials on the same connection, call:sdp_offer. Today's server answers it with a
new session, so the page connects again; a server that restarts in place keeps the session. Either
way the call survives with media both ways."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bench.netlab import Netlab
from bench.shaped import OBSERVE_CALL, web_app_call
from tests.webapp.browser import ensure_socket_io_bundle

from .conftest import LabAirwave

pytestmark = pytest.mark.netlab

CONNECTION = "() => { const c = window.airwave.call.connection; return {sessionId: c.sessionId, closed: c.closed}; }"


async def remote_frames(page: Any) -> int:
    latest = await page.evaluate("() => window.netlab.latest('call')")
    return int(((latest or {}).get("inbound") or {}).get("framesDecoded", 0))


async def frames_grow(page: Any, within: float) -> None:
    start = await remote_frames(page)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        if await remote_frames(page) > start:
            return
    raise AssertionError(f"no new remote frame within {within}s")


@pytest.mark.timeout(180)
async def test_a_call_survives_an_ice_restart_of_one_party(lab: Netlab, airwave: LabAirwave) -> None:
    ensure_socket_io_bundle()
    caller = lab.add_peer("caller")
    callee = lab.add_peer("callee")
    server = await airwave.start(call_duration=0)
    async with web_app_call(lab, server, caller, callee) as (caller_page, callee_page):
        for page in (caller_page, callee_page):
            await frames_grow(page, 15)
        before = await caller_page.evaluate(CONNECTION)
        warnings: list[str] = []
        caller_page.on("console", lambda m: m.type == "warning" and warnings.append(m.text))

        await caller_page.evaluate("() => window.airwave.call.connection.restartIce('test')")

        # in place: the same session; today's server: a new connection, negotiated afresh
        await caller_page.wait_for_function(
            "() => window.airwave.call.connection.sessionId && !window.airwave.call.connection.closed")
        after = await caller_page.evaluate(CONNECTION)
        replaced = after["sessionId"] != before["sessionId"]
        print(f"ICE restart: {'new session' if replaced else 'in place'}; page said {warnings}")
        await caller_page.wait_for_function("(document.querySelector('#call-remote') || {}).videoWidth > 0")
        for page in (caller_page, callee_page):
            await page.evaluate(OBSERVE_CALL, "call")  # the connection may be a new one
            await frames_grow(page, 20)
        assert await caller_page.is_hidden("#call-ended")
