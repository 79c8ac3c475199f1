"""sfu:layer: a subscriber caps its own simulcast layer; nobody else's.
sfu:layer_changed: the server tells a viewer's sockets, and only its own, when
it switches, pauses or resumes the video the viewer's link gets."""

from __future__ import annotations

import asyncio

import pytest
import socketio

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import Viewer, wait_for
from tests.sfu.sfu_simulcast import SimulcastPublisher, quiet_remb, send_remb

pytestmark = pytest.mark.parametrize("backend", ["embedded"])


async def connect(app: RunningApp, token: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(app.url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    return client


async def publish_simulcast(app: RunningApp, room: str) -> SimulcastPublisher:
    """Three VP8 layers (80x60, 160x120, 320x240) published into ``room``."""
    frames = [encoded_vp8(30, seed=s, size=size) for s, size in ((3, (80, 60)), (4, (160, 120)), (5, (320, 240)))]
    publisher = SimulcastPublisher(frames)
    session = await app.app[AIRWAVE].media.publish(room, await publisher.offer())
    await publisher.accept(session.answer_sdp)
    return publisher


async def subscribe(app: RunningApp, client: socketio.AsyncClient, room: str, viewer: Viewer):
    """``viewer`` watches ``room`` through ``client``'s sfu:subscribe: its session id and video track."""
    ack = await client.call("sfu:subscribe", {"roomId": room, "sdp": await viewer.offer()}, timeout=10)
    await viewer.accept(ack["sdp"])
    return ack["sessionId"], app.app[AIRWAVE].media.session(ack["sessionId"]).downtracks[0]


async def test_layer_cap_for_ones_own_subscription_only(running: RunningApp) -> None:
    publisher = await publish_simulcast(running, "L2")
    bob = await connect(running, running.token("bob", room="L2", subscribe=True))
    eve = await connect(running, running.token("eve", room="L2", subscribe=True))
    viewer = Viewer()
    try:
        sid, down = await subscribe(running, bob, "L2", viewer)

        # someone else's subscription, bad values, no value: refused, nothing changes
        for client, data, code in [
            (eve, {"sessionId": sid, "maxLayer": "low"}, "session_not_found"),
            (bob, {"sessionId": sid, "maxLayer": "enormous"}, "bad_request"),
            (bob, {"sessionId": sid, "maxLayer": 9}, "bad_request"),
            (bob, {"sessionId": sid, "maxLayer": True}, "bad_request"),
            (bob, {"sessionId": sid}, "bad_request"),
            (bob, "not an object", "bad_request"),
        ]:
            ack = await client.call("sfu:layer", data, timeout=5)
            assert ack["error"]["code"] == code, (data, ack)
        assert down.max_layer is None

        assert await bob.call("sfu:layer", {"sessionId": sid, "maxLayer": "low"}, timeout=5) == {"ok": True}
        assert down.max_layer == 0
        await wait_for(lambda: down.layer is not None and down.layer.index == 0, 8)

        # a burst of changes is rate limited
        codes = []
        for _ in range(8):
            ack = await bob.call("sfu:layer", {"sessionId": sid, "maxLayer": None}, timeout=5)
            codes.append(ack.get("error", {}).get("code", "ok"))
        assert "rate_limited" in codes and codes[0] == "ok"
    finally:
        await bob.disconnect()
        await eve.disconnect()
        await viewer.close()
        await publisher.close()


async def test_a_viewer_hears_its_video_paused_and_resumed(running: RunningApp) -> None:
    publisher = await publish_simulcast(running, "L3")
    bob = await connect(running, running.token("bob", room="L3", subscribe=True))
    bob_tab = await connect(running, running.token("bob"))  # another socket of his: the app's other tab
    eve = await connect(running, running.token("eve", room="L3", subscribe=True))
    heard: dict[str, list[dict]] = {"bob": [], "bob_tab": [], "eve": []}
    for name, client in (("bob", bob), ("bob_tab", bob_tab), ("eve", eve)):
        client.on("sfu:layer_changed", heard[name].append)
    viewer = Viewer()
    try:
        sid, down = await subscribe(running, bob, "L3", viewer)
        receiver = viewer.transceivers[0].receiver
        quiet_remb(receiver)  # the test's REMB is the viewer's estimate
        await wait_for(lambda: down.layer is not None and all(x.bitrate > 0 for x in down.up.layers), 10)

        for _ in range(80):  # a link too slow for even the lowest layer
            await send_remb(receiver, 10_000)
            await asyncio.sleep(0.1)
            if down.paused:
                break
        assert down.paused
        await wait_for(lambda: any(e["paused"] for e in heard["bob"]), 5)
        paused = next(e for e in heard["bob"] if e["paused"])
        assert paused == {"sessionId": sid, "roomId": "L3", "mid": down.mid, "layer": None, "rid": None,
                          "layers": 3, "paused": True}
        await wait_for(lambda: paused in heard["bob_tab"], 5)

        for _ in range(100):  # plenty again: the video resumes at a keyframe
            await send_remb(receiver, 5_000_000)
            await asyncio.sleep(0.1)
            if not down.paused and down.layer is not None:
                break
        await wait_for(lambda: not heard["bob"][-1]["paused"], 5)
        resumed = heard["bob"][-1]
        assert resumed["sessionId"] == sid and resumed["layer"] == down.layer.index
        assert resumed["rid"] == down.layer.rid and resumed["layers"] == 3
        assert heard["eve"] == []  # someone else's video is none of her business
    finally:
        await bob.disconnect()
        await bob_tab.disconnect()
        await eve.disconnect()
        await viewer.close()
        await publisher.close()
