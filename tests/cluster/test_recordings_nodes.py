"""Recordings across nodes: the owner asks node B to record a room published
on node A, and A (the origin) records it (and stops it when B is asked to);
B serves the file by proxying to A
(no shared directory here), ranges included. A is SIGKILLed mid-recording:
when it starts again, the recording is ``interrupted`` and its file plays."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.cluster.nodes import Cluster, Node
from tests.recording.recorded_file import decodes, read_recording
from tests.sfu.sfu_media import encoded_opus, encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher

ROOM = "recorded"


async def call(http: aiohttp.ClientSession, method: str, node: Node, path: str, token: str,
               headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str], bytes]:
    async with http.request(method, node.url + path,
                            headers={"Authorization": f"Bearer {token}", **(headers or {})}) as r:
        body = await r.read()
        parsed = await r.json() if r.content_type == "application/json" else None
        return r.status, parsed, dict(r.headers), body


async def test_recorded_on_the_origin_served_from_any_node_and_recovered_after_sigkill(
    tmp_path: Path,
) -> None:
    async with Cluster(2, room_publisher_grace=30) as cluster, aiohttp.ClientSession() as http:
        a, b = cluster.nodes
        owner = cluster.token("olga", room=ROOM, publish=True)
        publisher = Publisher([PacketTrack("video", encoded_vp8(60)), PacketTrack("audio", encoded_opus(50))])
        try:
            async with http.post(f"{a.url}/whip/{ROOM}", data=await publisher.offer(),
                                 headers={"Authorization": f"Bearer {owner}",
                                          "Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                await publisher.accept(await r.text())
            deadline = time.monotonic() + 15
            while True:  # B hands the start to A, where the publisher is
                status, body, _, _ = await call(http, "POST", b, f"/api/v1/rooms/{ROOM}/recording", owner)
                if status == 201:
                    break
                assert status in (404, 409) and time.monotonic() < deadline, (status, body)
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)
            status, first, _, _ = await call(http, "DELETE", b, f"/api/v1/rooms/{ROOM}/recording", owner)
            assert status == 200 and first["id"] == body["id"] and first["status"] == "complete", first
            assert first["endReason"] == "stopped" and first["duration"] > 1.0
            status, body, _, _ = await call(http, "POST", b, f"/api/v1/rooms/{ROOM}/recording", owner)
            assert status == 201, body
            recording_id = body["id"]
            assert body["status"] == "recording"
            status, room, _, _ = await call(http, "GET", b, f"/api/v1/rooms/{ROOM}", owner)
            assert room["recording"] is True and room["recordingId"] == recording_id
            outsider = cluster.token("mallory")
            status, _, _, _ = await call(http, "DELETE", b, f"/api/v1/rooms/{ROOM}/recording", outsider)
            assert status == 403
            await asyncio.sleep(4)

            a.kill()  # no trailer, no status: as a power cut
            await publisher.close()
            status, body, _, _ = await call(http, "GET", b, f"/api/v1/recordings/{recording_id}", owner)
            assert body["status"] == "recording"
            await cluster.restart(a)
            deadline = time.monotonic() + 15
            while body["status"] == "recording":
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.2)
                _, body, _, _ = await call(http, "GET", b, f"/api/v1/recordings/{recording_id}", owner)
            assert body["status"] == "interrupted" and body["endReason"] == "node_restarted", body
            assert body["duration"] > 2.0 and body["size"] > 0

            # B has no such file: it proxies to A, ranges and all
            path = f"/api/v1/recordings/{recording_id}/file"
            status, _, headers, whole = await call(http, "GET", b, path, owner)
            assert status == 200 and len(whole) == body["size"] and headers["Content-Type"] == "video/webm"
            status, _, headers, part = await call(http, "GET", b, path, owner, {"Range": "bytes=10-29"})
            assert status == 206 and part == whole[10:30]
            assert headers["Content-Range"] == f"bytes 10-29/{len(whole)}"
            (tmp_path / "killed.webm").write_bytes(whole)
            recorded = read_recording(tmp_path / "killed.webm")
            assert set(recorded.codecs) == {"video", "audio"} and recorded.duration > 2.0
            assert decodes(tmp_path / "killed.webm") == 5
        finally:
            await publisher.close()
