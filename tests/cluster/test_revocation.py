"""A suspension made on one node ends the user's sockets on every node within
2 seconds, and every node refuses the token afterwards (issue 15.5)."""

from __future__ import annotations

import asyncio
import time

from tests.cluster.cluster_clients import Peer, rest
from tests.cluster.nodes import Cluster


async def test_a_suspension_on_one_node_ends_sockets_on_the_others() -> None:
    async with Cluster(2) as cluster:
        a, b = cluster.nodes
        sam_on_b = await Peer.connect(cluster, b, "sam")
        gone = asyncio.Event()
        sam_on_b.sio.on("disconnect", gone.set)
        bystander = await Peer.connect(cluster, b, "ivy")
        admin = {"Authorization": f"Bearer {cluster.token('root', admin=True)}"}
        status, _ = await rest(cluster, a, "POST", "/api/v1/admin/users/sam/suspend", "root", {"reason": "x"},
                               headers=admin)
        assert status == 200
        suspended_at = time.monotonic()
        (_, revoked), = await sam_on_b.wait("auth:revoked", within=2)
        assert revoked == {"code": "suspended"}
        # ended on node B within 2 s of the suspension on node A
        await asyncio.wait_for(gone.wait(), max(0.0, 2 - (time.monotonic() - suspended_at)))
        for node in (a, b):
            status, body = await rest(cluster, node, "GET", "/api/v1/wallet", "sam")
            assert (status, body["code"]) == (401, "suspended")
        assert bystander.sio.connected and bystander.got("auth:revoked") == []
