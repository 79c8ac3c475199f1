"""Calls across nodes: signaling, timers on time, a killed node's timers fired
by another node exactly once, and an atomic busy check."""

from __future__ import annotations

import asyncio
import time

from tests.cluster.cluster_clients import Peer
from tests.cluster.nodes import Cluster

SLACK = 0.8  # seconds: polling (0.1 s), the bus and a loaded machine


async def test_calls_across_nodes_ring_answer_time_out_and_survive_a_killed_node() -> None:
    async with Cluster(3, ring_timeout=2, call_duration=4, call_warning_before=1.5,
                       reconnect_grace=30) as cluster:
        a, b, c = cluster.nodes

        # A call from node A to node B rings, is answered, warns and times out on time.
        ann = await Peer.connect(cluster, a, "ann")
        bob = await Peer.connect(cluster, b, "bob")
        ack = await ann.call("call:initiate", {"to": "bob", "media": "audio"})
        call_id = ack["callId"]
        (_, incoming), = await bob.wait("call:incoming")
        assert (incoming["callId"], incoming["from"]) == (call_id, "ann")
        answered = await bob.call("call:answer", {"callId": call_id})
        assert "error" not in answered, answered
        (_, news), = await ann.wait("call:answered")
        ends_at = news["endsAt"]
        for peer in (ann, bob):
            (warned_at, warning), = await peer.wait("call:timeout_warning", within=8)
            assert abs(warned_at - (ends_at - 1.5)) < SLACK, (warned_at, ends_at)
            (ended_at, ended), = await peer.wait("call:ended", within=8)
            assert ended["reason"] == "timeout" and ended["callId"] == call_id
            assert abs(ended_at - ends_at) < SLACK, (ended_at, ends_at)

        # Unanswered, it ends as missed after the ring timeout, for both, once.
        ack = await bob.call("call:initiate", {"to": "ann", "media": "video"})
        rung = time.time()
        for peer in (ann, bob):
            ends = await peer.wait("call:ended", count=2, within=6)
            t, ended = ends[1]
            assert ended["reason"] == "missed" and ended["callId"] == ack["callId"]
            assert abs(t - (rung + 2)) < SLACK, t - rung

        # Two callers on two nodes call one callee at once: exactly one rings.
        cat = await Peer.connect(cluster, c, "cat")
        dan = await Peer.connect(cluster, a, "dan")
        first, second = await asyncio.gather(
            cat.call("call:initiate", {"to": "bob", "media": "audio"}),
            dan.call("call:initiate", {"to": "bob", "media": "audio"}),
        )
        statuses = sorted([first["status"], second["status"]])
        assert statuses == ["ended", "ringing"], (first, second)
        busy = first if first["status"] == "ended" else second
        assert busy["endReason"] == "busy"
        ringing = second if busy is first else first
        await asyncio.sleep(0.3)
        assert [i["callId"] for i in bob.got("call:incoming")][1:] == [ringing["callId"]]
        for peer in (cat, dan):
            await peer.wait("call:ended", within=6)  # the ringing one is missed: the lock is released
        again = await dan.call("call:initiate", {"to": "bob", "media": "audio"})
        assert again["status"] == "ringing", again
        await dan.call("call:end", {"callId": again["callId"]})

        # The callee answers on node A, which sets the call's deadline; A is killed.
        await bob.wait("call:ended", count=4, within=6)
        eve = await Peer.connect(cluster, b, "eve")
        fay = await Peer.connect(cluster, a, "fay")
        ack = await eve.call("call:initiate", {"to": "fay", "media": "audio"})
        await fay.wait("call:incoming")
        answered = await fay.call("call:answer", {"callId": ack["callId"]})
        assert "error" not in answered, answered
        (_, news), = await eve.wait("call:answered")
        ends_at = news["endsAt"]
        a.kill()
        fay2 = await Peer.connect(cluster, c, "fay")  # she comes back through node C
        (_, resumed), = await fay2.wait("call:resumed")
        assert resumed["callId"] == ack["callId"]
        for peer in (eve, fay2):
            (ended_at, ended), = await peer.wait("call:ended", within=8)
            assert ended["reason"] == "timeout" and ended["callId"] == ack["callId"]
            assert abs(ended_at - ends_at) < SLACK, (ended_at, ends_at)
        await asyncio.sleep(1.5)  # a second firing would show up here
        assert len(eve.got("call:ended")) == 1 and len(fay2.got("call:ended")) == 1
