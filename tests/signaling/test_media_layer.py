"""sfu:layer: a subscriber caps its own simulcast layer; nobody else's."""

from __future__ import annotations

import pytest
import socketio

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import Viewer, wait_for
from tests.sfu.sfu_simulcast import SimulcastPublisher

pytestmark = pytest.mark.parametrize("backend", ["embedded"])


async def connect(app: RunningApp, token: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(app.url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    return client


async def test_layer_cap_for_ones_own_subscription_only(running: RunningApp) -> None:
    engine = running.app[AIRWAVE].media
    frames = [encoded_vp8(30, seed=s, size=size) for s, size in ((3, (80, 60)), (4, (160, 120)), (5, (320, 240)))]
    publisher = SimulcastPublisher(frames)
    session = await engine.publish("L2", await publisher.offer())
    await publisher.accept(session.answer_sdp)
    bob = await connect(running, running.token("bob", room="L2", subscribe=True))
    eve = await connect(running, running.token("eve", room="L2", subscribe=True))
    viewer = Viewer()
    try:
        ack = await bob.call("sfu:subscribe", {"roomId": "L2", "sdp": await viewer.offer()}, timeout=10)
        await viewer.accept(ack["sdp"])
        sid = ack["sessionId"]
        down = engine.session(sid).downtracks[0]

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
