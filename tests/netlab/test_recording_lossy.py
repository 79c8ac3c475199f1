"""A recording of a Chromium publisher whose uplink loses and reorders packets (3 % loss,
30 ± 10 ms: the TUN impairment of bench/impair.py): the SFU's NACKs bring the lost packets
back over Chromium's RTX, late and out of order, and the recorder puts them back in place,
so the file holds about every frame the publisher sent. Without its reorder buffer each
loss cost the frames up to the next keyframe (at most one asked for a second)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from bench.impair import Impairment, Impairments
from bench.netlab import Netlab, http_in, lab_page
from tests.recording.recorded_file import read_recording

from .conftest import LabAirwave, record

pytestmark = pytest.mark.netlab

ROOM = "lossy-rec"
RECORD_S = 20.0
MIN_SHARE = 0.85  # of the frames the publisher sent while the recording ran


async def sent_counts(page: Any) -> dict[str, int]:
    """The publisher's video sender counters: frames sent, PLIs and NACKs received, packets resent."""
    sample = await page.evaluate("() => window.netlab.latest('publisher')") or {}
    layers = (sample.get("outbound") or {}).values()
    return {name: sum(int(layer.get(name) or 0) for layer in layers)
            for name in ("framesSent", "pliCount", "nackCount", "retransmittedPacketsSent")}


@pytest.mark.timeout(180)
async def test_a_lossy_uplink_is_recorded_whole(lab: Netlab, airwave: LabAirwave) -> None:
    lab.add_peer("publisher", impaired=Impairments(up=Impairment(loss=0.03, delay_ms=30, jitter_ms=10),
                                                   seed=23))
    server = await airwave.start()
    token = airwave.token("netlab", room=ROOM, publish=True, subscribe=True)
    peer = lab.peers["publisher"]
    async with contextlib.AsyncExitStack() as stack:
        page = await stack.enter_async_context(lab_page(peer, server.url_for(peer)))
        offered = await page.evaluate("(a) => window.netlab.publish(a)",
                                      {"room": ROOM, "token": token, "simulcast": False})
        assert offered["encodings"] == ["-"], offered
        await page.evaluate("() => window.netlab.connected('publisher')")
        http = await stack.enter_async_context(http_in(lab.server_namespace))
        headers = {"Authorization": f"Bearer {token}"}
        recording_url = f"{server.local_url}/api/v1/rooms/{ROOM}/recording"
        deadline = time.monotonic() + 20
        while True:  # the room is live once the publisher's media is up
            async with http.post(recording_url, headers=headers) as response:
                body = await response.json()
                if response.status == 201:
                    break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.25)
        before = await sent_counts(page)
        await asyncio.sleep(RECORD_S)
        after = await sent_counts(page)
        sent = after["framesSent"] - before["framesSent"]
        async with http.delete(recording_url, headers=headers) as response:
            done = await response.json()
            assert response.status == 200 and done["status"] == "complete", done
        link = lab.impairment_stats("publisher")

    (path,) = (server.data_dir / "recordings").glob(f"{done['id']}.*")
    recorded = read_recording(path)
    frames = len(recorded.packets["video"])
    times = recorded.times["video"]
    longest_gap = max(b - a for a, b in zip(times, times[1:], strict=False))
    figures = {"sent": sent, "recorded": frames, "share": frames / sent if sent else None,
               "longestGapS": longest_gap, "durationS": done["duration"], "link": link,
               "publisher": {k: after[k] - before[k] for k in after}}
    record("recording_lossy_uplink", figures)
    assert link["up"]["dropped"] > 20, figures  # the link did lose packets
    assert sent > 100, figures
    assert frames >= MIN_SHARE * sent, figures
