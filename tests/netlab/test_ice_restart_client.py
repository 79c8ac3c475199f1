"""Issue 18 on a real network: a Chromium viewer's address changes mid-stream (its veth address
moves), the web app restarts ICE with a PATCH (api/static/js/whip.js, RFC 9725 §4.4.1), and media
resumes on the new path within 3 s under the same DTLS association. A restart with a stale ETag or
another user's token is refused and changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.netlab import Netlab, http_in, lab_page

from .conftest import LabAirwave, frames_grow

pytestmark = pytest.mark.netlab
ROOM = "restart"
SDPFRAG = "application/trickle-ice-sdpfrag"


async def new_sample(page: Any, name: str, after: float) -> dict[str, Any]:
    """The first stats sample taken after page time ``after`` (samples come every second)."""
    for _ in range(40):
        latest = await page.evaluate("(n) => window.netlab.latest(n)", name)
        if latest and latest["t"] > after:
            return latest
        await asyncio.sleep(0.1)
    raise AssertionError("no new stats sample")


@pytest.mark.timeout(180)
async def test_a_viewer_whose_address_changes_restarts_ice_and_keeps_watching(
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
        before = await view.evaluate("() => window.netlab.latest('viewer')")
        assert before["pair"]["local"].startswith(f"{viewer.address}:")

        new_address = lab.move_address("viewer")  # the old address is gone: the old path is dead
        patches: list[Any] = []
        view.on("request", lambda request: request.method == "PATCH" and patches.append(request))
        restarted = await view.evaluate("() => window.netlab.restartIce('viewer')")
        restarted_at = await view.evaluate("() => performance.now()")
        assert restarted is True

        # the request is RFC 9725's ...
        patch = patches[-1]
        assert patch.url == watched["location"]
        headers = await patch.all_headers()
        assert headers["content-type"] == SDPFRAG
        assert headers["if-match"] == "*"
        assert headers["authorization"] == f"Bearer {token}"
        lines = (patch.post_data or "").split("\r\n")
        assert sum(line.startswith("m=") for line in lines) == 1
        assert any(line.startswith("a=candidate:") and f" {new_address} " in line for line in lines)
        # ... and so is the answer: 200, the server's new credentials and candidates, a new ETag
        response = await patch.response()
        assert response.status == 200
        assert (await response.all_headers())["content-type"] == SDPFRAG
        etag = (await response.all_headers())["etag"]
        assert etag != watched["etag"]
        answer = (await response.text()).split("\r\n")
        assert any(line.startswith("a=ice-ufrag:") for line in answer) and "a=end-of-candidates" in answer

        # media resumes within 3 s, on the new address, with the same DTLS association
        await frames_grow(view, "viewer", 3)
        after = await new_sample(view, "viewer", restarted_at)
        assert after["pair"]["local"].startswith(f"{new_address}:"), after["pair"]
        assert after["transport"]["iceLocalUsernameFragment"] != before["transport"]["iceLocalUsernameFragment"]
        assert after["transport"]["id"] == before["transport"]["id"]
        assert after["transport"]["remoteFingerprint"] == before["transport"]["remoteFingerprint"]
        assert after["transport"]["dtlsState"] == "connected"

        # refused restarts change nothing: a stale ETag, another user's token
        fragment = "a=ice-ufrag:late\r\na=ice-pwd:" + "p" * 22 + "\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
        eve = airwave.token("eve", room=ROOM, subscribe=True)
        async with http_in(viewer.namespace) as http:
            async with http.patch(watched["location"], data=fragment, headers={
                    "Content-Type": SDPFRAG, "If-Match": watched["etag"], "Authorization": f"Bearer {token}"}) as r:
                assert r.status == 412 and (await r.json())["code"] == "precondition_failed"
            async with http.patch(watched["location"], data=fragment, headers={
                    "Content-Type": SDPFRAG, "If-Match": "*", "Authorization": f"Bearer {eve}"}) as r:
                assert r.status == 403 and (await r.json())["code"] == "forbidden"
            # the session is the one it was: a trickle PATCH with the new ETag is taken
            async with http.patch(watched["location"], data="a=end-of-candidates\r\n", headers={
                    "Content-Type": SDPFRAG, "If-Match": etag, "Authorization": f"Bearer {token}"}) as r:
                assert r.status == 204, await r.text()
        await frames_grow(view, "viewer", 3)
        assert (await view.evaluate("() => window.netlab.state('viewer')"))["connectionState"] == "connected"
