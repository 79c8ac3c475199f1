"""The first viewer on a fresh edge gets media as reliably as a viewer on the
origin: many rooms published on node A, each watched first on node B at once
(issue 15.16).

The race it pins: the origin starts its ICE checks as soon as it answers the
edge's pull, and they could reach the edge before the answer did, while the
edge was still ICE-controlled; the role conflict then left both sides waiting
for the other to nominate (1 in 4 runs of this test had a viewer with no video).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.cluster.nodes import Cluster, Node
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, Viewer, wait_for

SDP = {"Content-Type": "application/sdp"}
ROOMS = 8


async def _publish(http: aiohttp.ClientSession, cluster: Cluster, node: Node, room: str, frames: list) -> Publisher:
    publisher = Publisher([PacketTrack("video", frames)])
    headers = {"Authorization": f"Bearer {cluster.token('pub', room=room, publish=True)}", **SDP}
    async with http.post(f"{node.url}/whip/{room}", data=await publisher.offer(), headers=headers) as r:
        assert r.status == 201, await r.text()
        await publisher.accept(await r.text())
    return publisher


async def _first_viewer(http: aiohttp.ClientSession, cluster: Cluster, node: Node, room: str) -> Viewer:
    """WHEP on the edge as soon as the origin is known there (404 until then)."""
    token = cluster.token("fan", room=room, subscribe=True)
    deadline = time.monotonic() + 15
    while True:
        viewer = Viewer(("video",))
        async with http.post(f"{node.url}/whep/{room}", data=await viewer.offer(),
                             headers={"Authorization": f"Bearer {token}", **SDP}) as r:
            body = await r.text()
            if r.status == 201:
                await viewer.accept(body)
                return viewer
        await viewer.close()
        assert r.status == 404 and time.monotonic() < deadline, (r.status, body)
        await asyncio.sleep(0.05)


async def test_first_viewers_on_fresh_edges_all_get_video() -> None:
    frames = encoded_vp8(90)
    async with Cluster(2) as cluster, aiohttp.ClientSession() as http:
        origin, edge = cluster.nodes
        peers: list[Publisher | Viewer] = []
        try:
            rooms = [f"fresh-{i}" for i in range(ROOMS)]
            publishers = await asyncio.gather(*(_publish(http, cluster, origin, r, frames) for r in rooms))
            peers.extend(publishers)
            viewers = await asyncio.gather(*(_first_viewer(http, cluster, edge, r) for r in rooms))
            peers.extend(viewers)
            try:
                await wait_for(lambda: all(len(v.frames["video"]) >= 10 for v in viewers), 15)
            except TimeoutError:
                counts = [(len(v.frames["video"]), v.pc.connectionState) for v in viewers]
                raise AssertionError(f"frames per first viewer: {counts}\n{cluster.logs()}") from None
        finally:
            for peer in peers:
                await peer.close()
