"""Chat and presence across three nodes sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio

from tests.cluster.cluster_clients import Peer, rest
from tests.cluster.nodes import Cluster


async def test_chat_reaches_other_nodes_seq_is_gap_free_and_presence_is_cluster_wide() -> None:
    async with Cluster(3, chat_rate=1000) as cluster:
        a, b, c = cluster.nodes
        ann = await Peer.connect(cluster, a, "ann")
        cid = await Peer.connect(cluster, c, "cid")
        status, room = await rest(cluster, b, "POST", "/api/v1/chats", "ann", {"userId": "cid"})
        assert status in (200, 201), room
        room_id = room["id"]

        # A message sent through node A reaches the client on node C.
        ack = await ann.call("chat:send", {"roomId": room_id, "text": "hello from A", "clientId": "m0"})
        assert ack["seq"] == 1, ack
        (_, heard), = await cid.wait("chat:message")
        assert (heard["text"], heard["seq"], heard["userId"]) == ("hello from A", 1, "ann")

        # Both users send at once through their nodes: every seq once, no gaps.
        async def burst(peer: Peer, n: int) -> list[int]:
            acks = await asyncio.gather(*(
                peer.call("chat:send", {"roomId": room_id, "text": f"{peer.user}{i}", "clientId": f"{peer.user}-{i}"})
                for i in range(n)
            ))
            return [x["seq"] for x in acks]

        seqs = await asyncio.gather(burst(ann, 30), burst(cid, 30))
        assert sorted(seqs[0] + seqs[1]) == list(range(2, 62))

        # History is the same from every node.
        pages = []
        for node in cluster.nodes:
            status, page = await rest(cluster, node, "GET", f"/api/v1/rooms/{room_id}/messages?limit=100", "cid")
            assert status == 200, page
            pages.append(page["messages"])
        assert pages[0] == pages[1] == pages[2]
        assert [m["seq"] for m in pages[0]] == list(range(1, 62))
        await ann.wait("chat:message", count=61)  # ann hears all, her own included, from both nodes

        # Presence: ann has sockets on A and C; offline only when the last one closes.
        ann_c = await Peer.connect(cluster, c, "ann")
        await ann.sio.disconnect()
        await asyncio.sleep(0.5)
        status, presence = await rest(cluster, b, "GET", "/api/v1/users/ann/presence", "cid")
        assert presence["online"] is True, presence
        assert cid.got("presence:offline") == []
        await ann_c.sio.disconnect()
        (_, offline), = await cid.wait("presence:offline")
        assert offline["userId"] == "ann"
        status, presence = await rest(cluster, a, "GET", "/api/v1/users/ann/presence", "cid")
        assert presence["online"] is False, presence
