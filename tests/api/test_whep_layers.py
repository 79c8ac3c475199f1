"""WHEP ?maxLayer: a viewer of a simulcast room caps its layer at POST time."""

from __future__ import annotations

import aiohttp
import pytest

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import Viewer, wait_for
from tests.sfu.sfu_simulcast import SimulcastPublisher

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

SDP = {"Content-Type": "application/sdp"}


async def test_whep_max_layer_caps_the_layer_and_bad_values_are_refused(running: RunningApp) -> None:
    engine = running.app[AIRWAVE].media
    frames = [encoded_vp8(30, seed=s, size=size) for s, size in ((3, (80, 60)), (4, (160, 120)), (5, (320, 240)))]
    publisher = SimulcastPublisher(frames)
    session = await engine.publish("L1", await publisher.offer())
    await publisher.accept(session.answer_sdp)
    viewer = Viewer()
    token = running.token("vic", room="L1", subscribe=True)
    outsider = running.token("eve", room="other", subscribe=True)
    async with aiohttp.ClientSession() as http:
        url = f"{running.url}/whep/L1"
        offer = await viewer.offer()
        headers = {"Authorization": f"Bearer {outsider}", **SDP}
        async with http.post(url + "?maxLayer=low", data=offer, headers=headers) as r:
            assert r.status == 403 and (await r.json())["code"] == "forbidden"
        headers = {"Authorization": f"Bearer {token}", **SDP}
        for bad in ("huge", "7", "-1", ""):
            async with http.post(url, params={"maxLayer": bad}, data=offer, headers=headers) as r:
                body = await r.json()
                assert (r.status, body["code"]) == (400, "bad_request"), bad
        assert engine.subscriber_count("L1") == 0
        async with http.post(url + "?maxLayer=low", data=offer, headers=headers) as r:
            assert r.status == 201
            await viewer.accept(await r.text())
        watching = next(s for s in engine._sessions.values() if s.role == "subscriber")
        down = watching.downtracks[0]
        assert down.max_layer == 0
        await wait_for(lambda: down.layer is not None and down.layer.index == 0, 8)
        await wait_for(lambda: len(viewer.payloads["video"]) > 10, 8)
        assert all(publisher.layer_of(p) == 0 for p in viewer.payloads["video"][-10:])
    await viewer.close()
    await publisher.close()
