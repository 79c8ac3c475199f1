"""sfu:* over Socket.IO: the same sessions, grants and errors as WHIP/WHEP."""

from __future__ import annotations

import pytest
import socketio

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, Viewer, vp8_keyframe, wait_for

pytestmark = pytest.mark.parametrize("backend", ["embedded"])


async def connect(app: RunningApp, token: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(app.url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    return client


async def test_publish_subscribe_and_socket_loss_end_sessions(running: RunningApp) -> None:
    frames = encoded_vp8(40)
    engine = running.app[AIRWAVE].media
    alice = await connect(running, running.token("alice", room="s1", publish=True))
    bob = await connect(running, running.token("bob", room="s1", subscribe=True))
    publisher = Publisher([PacketTrack("video", frames)])
    viewer = Viewer()
    try:
        ack = await alice.call("sfu:publish", {"roomId": "s1", "sdp": await publisher.offer()}, timeout=10)
        assert set(ack) == {"sessionId", "sdp"}, ack
        await publisher.accept(ack["sdp"])
        await wait_for(lambda: engine.rooms().get("s1") is not None and engine.rooms()["s1"].live, 10)

        ack = await bob.call("sfu:subscribe", {"roomId": "s1", "sdp": await viewer.offer()}, timeout=10)
        await viewer.accept(ack["sdp"])
        await wait_for(lambda: len(viewer.frames["video"]) >= 5, 10)
        assert vp8_keyframe(viewer.frames["video"][0][1])
        sent = {f.data for f in frames}
        assert all(data in sent for _, data in viewer.frames["video"])

        # Trickle on someone else's session is refused; on one's own it is taken.
        err = await alice.call("sfu:ice_candidate", {"sessionId": ack["sessionId"], "candidate": ""}, timeout=5)
        assert err["error"]["code"] == "session_not_found"
        ok = await bob.call("sfu:ice_candidate", {"sessionId": ack["sessionId"], "candidate": ""}, timeout=5)
        assert ok == {"ok": True}

        assert (await bob.call("sfu:unsubscribe", {"sessionId": ack["sessionId"]}, timeout=5)) == {"ok": True}
        await wait_for(lambda: engine.subscriber_count("s1") == 0, 5)

        # The publisher's socket goes away: its session ends with it.
        await alice.disconnect()
        await wait_for(lambda: engine.session_count == 0, 10)
    finally:
        await bob.disconnect()
        await publisher.close()
        await viewer.close()


async def test_errors_are_acks(running: RunningApp) -> None:
    engine = running.app[AIRWAVE].media
    client = await connect(running, running.token("carol", room="s2", subscribe=True))
    try:
        viewer_offer = await Viewer().offer()
        cases = [
            ("sfu:publish", {"roomId": "s2", "sdp": viewer_offer}, "forbidden"),
            ("sfu:subscribe", {"roomId": "s2", "sdp": viewer_offer}, "room_not_live"),
            ("sfu:subscribe", {"roomId": "s2", "sdp": "garbage"}, "bad_sdp"),
            ("sfu:subscribe", {"roomId": "bad room!", "sdp": viewer_offer}, "bad_request"),
            ("sfu:subscribe", {"roomId": "s2"}, "bad_request"),
            ("sfu:subscribe", "not an object", "bad_request"),
            ("sfu:unpublish", {"sessionId": "nope"}, "session_not_found"),
        ]
        for event, data, code in cases:
            ack = await client.call(event, data, timeout=5)
            assert ack["error"]["code"] == code, (event, data, ack)
        assert engine.session_count == 0
    finally:
        await client.disconnect()
