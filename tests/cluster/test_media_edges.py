"""Media across nodes: a stream published on node A is watched on nodes B and C
through one pull per edge, byte for byte; an edge drops its pull when its
last viewer leaves."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.nodes import Cluster, Node
from tests.sfu.sfu_media import encoded_opus, encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, Viewer, vp8_keyframe, wait_for

SDP = {"Content-Type": "application/sdp"}
ROOM = "show"


def _digest(items) -> set[str]:
    return {hashlib.sha256(x).hexdigest() for x in items}


async def metric(http: aiohttp.ClientSession, node: Node, name: str) -> float:
    async with http.get(node.url + "/metrics") as r:
        text = await r.text()
    return sum(
        s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name
    )


async def until_metric(http: aiohttp.ClientSession, node: Node, name: str, value: float, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while (got := await metric(http, node, name)) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.node_id} {name} = {got}, expected {value}")
        await asyncio.sleep(0.1)


async def watch(http: aiohttp.ClientSession, node: Node, token: str) -> tuple[Viewer, str]:
    """A WHEP viewer on ``node``; retried while the origin is not yet registered."""
    deadline = time.monotonic() + 10
    while True:
        viewer = Viewer(("audio", "video"))
        headers = {"Authorization": f"Bearer {token}", **SDP}
        async with http.post(f"{node.url}/whep/{ROOM}", data=await viewer.offer(), headers=headers) as r:
            body = await r.text()
            if r.status == 201:
                await viewer.accept(body)
                return viewer, node.url + r.headers["Location"]
        await viewer.close()
        assert r.status == 404 and time.monotonic() < deadline, (r.status, body)
        await asyncio.sleep(0.2)


async def test_stream_on_a_is_watched_on_b_and_c_through_one_pull_per_edge() -> None:
    video_frames, audio_frames = encoded_vp8(60), encoded_opus(50)
    async with Cluster(3) as cluster, aiohttp.ClientSession() as http:
        a, b, c = cluster.nodes
        video, audio = PacketTrack("video", video_frames), PacketTrack("audio", audio_frames)
        publisher = Publisher([audio, video])
        viewers: list[tuple[Viewer, str]] = []
        try:
            headers = {"Authorization": f"Bearer {cluster.token('ann', room=ROOM, publish=True)}", **SDP}
            async with http.post(f"{a.url}/whip/{ROOM}", data=await publisher.offer(), headers=headers) as r:
                assert r.status == 201, await r.text()
                await publisher.accept(await r.text())

            token = cluster.token("viewer", room=ROOM, subscribe=True)
            for node in (b, b, c, c):
                viewers.append(await watch(http, node, token))
            await wait_for(lambda: all(len(v.frames["video"]) >= 20 for v, _ in viewers), 15)
            await wait_for(lambda: all(len(v.payloads["audio"]) >= 20 for v, _ in viewers), 5)

            # frames stay byte-identical end to end, and each viewer starts on a keyframe
            for v, _ in viewers:
                got = [f for _, f in v.frames["video"]]
                assert vp8_keyframe(got[0])
                assert _digest(got) <= _digest(video.sent)
                assert _digest(v.payloads["audio"]) <= _digest(audio.sent)

            # the origin serves one subscriber per edge, not one per viewer
            assert await metric(http, a, "airwave_sfu_subscribers") == 2
            for edge in (b, c):
                assert await metric(http, edge, "airwave_sfu_subscribers") == 2
                assert await metric(http, edge, "airwave_sfu_publishers") == 1  # the pulled copy

            # B's last viewer leaves: B drops its pull, the origin loses that subscriber; C carries on
            for v, location in viewers[:2]:
                async with http.delete(location, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200
                await v.close()
            await until_metric(http, b, "airwave_sfu_sessions", 0)
            await until_metric(http, a, "airwave_sfu_subscribers", 1)
            before = [len(v.frames["video"]) for v, _ in viewers[2:]]
            await wait_for(lambda: all(len(v.frames["video"]) > n + 10
                                       for (v, _), n in zip(viewers[2:], before, strict=True)), 5)

            # a new viewer on B pulls again
            viewers.append(await watch(http, b, token))
            await wait_for(lambda: len(viewers[-1][0].frames["video"]) >= 10, 10)
            assert await metric(http, a, "airwave_sfu_subscribers") == 2

            # an app viewer over Socket.IO (sfu:subscribe) on an edge uses the same pull
            socket = await cluster.socket(c, "app-viewer", room=ROOM, subscribe=True)
            app_viewer = Viewer(("audio", "video"))
            viewers.append((app_viewer, ""))
            ack = await socket.call("sfu:subscribe", {"roomId": ROOM, "sdp": await app_viewer.offer()}, timeout=10)
            assert "sdp" in ack, ack
            await app_viewer.accept(ack["sdp"])
            await wait_for(lambda: len(app_viewer.frames["video"]) >= 10, 10)
            assert _digest(f for _, f in app_viewer.frames["video"]) <= _digest(video.sent)
            assert await metric(http, a, "airwave_sfu_subscribers") == 2
            await socket.disconnect()
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            for v, _ in viewers:
                await v.close()
            await publisher.close()
