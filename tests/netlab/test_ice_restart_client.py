"""The web app's ICE restart request (api/static/js/whip.js, RFC 9725 §4.4.1) as Chromium sends
it from a namespace: a PATCH of the session URL with the new credentials and candidates. Today's
server refuses restarts (422): the page must roll back and keep watching.

Also the template for issue 18's tests: move the viewer's address with ``lab.move_address`` and
call ``window.netlab.restartIce(name)`` (see docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bench.netlab import Netlab, lab_page

from .conftest import LabAirwave

pytestmark = pytest.mark.netlab
ROOM = "restart"


async def frames(page: Any, name: str) -> int:
    latest = await page.evaluate("(n) => window.netlab.latest(n)", name)
    return int(((latest or {}).get("inbound") or {}).get("framesDecoded", 0))


async def frames_grow(page: Any, name: str, within: float) -> int:
    start = await frames(page, name)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await frames(page, name)
        if now > start:
            return now
    raise AssertionError(f"{name} decoded no new frame within {within}s (at {start})")


@pytest.mark.timeout(180)
async def test_a_refused_ice_restart_is_sent_as_rfc9725_says_and_rolled_back(
    lab: Netlab, airwave: LabAirwave
) -> None:
    publisher = lab.add_peer("publisher")
    viewer = lab.add_peer("viewer")
    server = await airwave.start()
    token = airwave.token("alice", room=ROOM, publish=True, subscribe=True)
    async with lab_page(publisher, server.url_for(publisher)) as pub, \
            lab_page(viewer, server.url_for(viewer)) as view:
        await pub.evaluate("(a) => window.netlab.publish(a)", {"room": ROOM, "token": token, "simulcast": True})
        watched = await view.evaluate("(a) => window.netlab.watch(a)", {"room": ROOM, "token": token})
        await view.evaluate("() => window.netlab.connected('viewer')")
        await frames_grow(view, "viewer", 20)
        first_ufrag = (await view.evaluate("() => window.netlab.latest('viewer')"))["transport"][
            "iceLocalUsernameFragment"]

        patches: list[Any] = []
        view.on("request", lambda request: request.method == "PATCH" and patches.append(request))
        restarted = await view.evaluate("() => window.netlab.restartIce('viewer')")

        assert restarted is False  # today's server: 422 ice_restart_unsupported
        assert len(patches) == 1
        patch = patches[0]
        assert patch.url == watched["location"]
        headers = await patch.all_headers()
        assert headers["content-type"] == "application/trickle-ice-sdpfrag"
        assert headers["if-match"] == "*"
        assert headers["authorization"] == f"Bearer {token}"
        lines = (patch.post_data or "").split("\r\n")
        ufrags = [line.split(":", 1)[1] for line in lines if line.startswith("a=ice-ufrag:")]
        assert len(ufrags) == 1 and ufrags[0] != first_ufrag
        assert any(line.startswith("a=ice-pwd:") for line in lines)
        assert lines[0].startswith(("m=", "a=")) and sum(line.startswith("m=") for line in lines) == 1
        assert any(line.startswith("a=mid:") for line in lines)
        assert any(line.startswith("a=candidate:") and f" {viewer.address} " in line for line in lines)
        assert "a=end-of-candidates" in lines
        assert (await patch.response()).status == 422

        state = await view.evaluate("() => window.netlab.state('viewer')")
        assert state["signalingState"] == "stable"
        await frames_grow(view, "viewer", 10)
