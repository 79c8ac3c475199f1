"""sfu:restart: an app client's ICE restart over its socket; only the socket
that opened the session may restart it."""

from __future__ import annotations

import pytest

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, wait_for
from tests.sfu.sfu_restart import ClientRestart, answer_parameters, nominated_pair

from .test_media_events import connect

pytestmark = pytest.mark.parametrize("backend", ["embedded"])


async def test_publisher_restarts_ice_over_its_socket(running: RunningApp) -> None:
    engine = running.app[AIRWAVE].media
    alice = await connect(running, running.token("alice", room="s9", publish=True))
    mallory = await connect(running, running.token("mallory", room="s9", publish=True, subscribe=True))
    track = PacketTrack("video", encoded_vp8(40))
    publisher = Publisher([track])
    try:
        ack = await alice.call("sfu:publish", {"roomId": "s9", "sdp": await publisher.offer()}, timeout=10)
        await publisher.accept(ack["sdp"])
        session = engine.session(ack["sessionId"])
        await wait_for(lambda: session.state == "connected" and session.uptracks[0].packets > 10, 10)
        client = ClientRestart(publisher.pc, "127.0.0.2")
        await client.gather()
        request = {"sessionId": session.id, "sdp": client.offer()}

        refused = await mallory.call("sfu:restart", request, timeout=5)
        assert refused["error"]["code"] == "session_not_found"
        bad = await alice.call("sfu:restart", {"sessionId": session.id, "sdp": "x" * 70_000}, timeout=5)
        assert bad["error"]["code"] == "bad_request"
        same = await alice.call("sfu:restart", {"sessionId": session.id, "sdp": publisher.pc.localDescription.sdp})
        assert same["error"]["code"] == "ice_restart_refused"  # the same credentials: nothing to restart

        restarted = await alice.call("sfu:restart", request, timeout=10)
        assert set(restarted) == {"sessionId", "sdp"} and restarted["sessionId"] == session.id
        again = await alice.call("sfu:restart", request, timeout=5)
        assert again["error"]["code"] == "ice_restart_refused"  # that restart is under way
        ufrag = client.restart.local_parameters().usernameFragment
        other = {**request, "sdp": request["sdp"].replace(ufrag, "another1")}
        soon = await alice.call("sfu:restart", other, timeout=5)
        assert soon["error"]["code"] == "rate_limited"
        await client.complete(*answer_parameters(restarted["sdp"]))
        await wait_for(lambda: nominated_pair(session.ice)[1][0] == "127.0.0.2", 3)
        packets = session.uptracks[0].packets
        await wait_for(lambda: session.uptracks[0].packets > packets + 30, 3)
        assert engine.session(session.id) is session and session.state == "connected"
    finally:
        await alice.disconnect()
        await mallory.disconnect()
        await publisher.close()
