"""Recordings over HTTP and Socket.IO: the owner starts and stops one, the
audience is told, the file is served with range requests under the live
room's audience rules, a full disk stops only the recording, a killed
recorder's file is recovered as interrupted and plays."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from api.components import AIRWAVE
from tests.conftest import RunningApp, rest, start_app
from tests.recording.recorded_file import decodes, read_recording
from tests.sfu.sfu_media import encoded_opus, encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, wait_for


async def _publish(running: RunningApp, room_id: str, user: str = "alice") -> Publisher:
    publisher = Publisher([PacketTrack("video", encoded_vp8(60)), PacketTrack("audio", encoded_opus(50))])
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{running.url}/whip/{room_id}", data=await publisher.offer(),
            headers={"Content-Type": "application/sdp",
                     "Authorization": f"Bearer {running.token(user, room=room_id, publish=True)}"},
        ) as r:
            answer = await r.text()
            assert r.status == 201, answer
    await publisher.accept(answer)
    return publisher


async def _live_room(running: RunningApp, public: bool) -> str:
    status, room = await rest(running, "POST", "/api/v1/rooms", "alice", {"type": "live", "public": public})
    assert status == 201, room
    return room["id"]


async def _wait_status(running: RunningApp, recording_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        status, body = await rest(running, "GET", f"/api/v1/recordings/{recording_id}", "alice")
        if status == 200 and body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def _get(running: RunningApp, path: str, user: str | None, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    all_headers = dict(headers or {})
    if user:
        all_headers["Authorization"] = f"Bearer {running.token(user)}"
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + path, headers=all_headers) as r:
            return r.status, dict(r.headers), await r.read()


async def test_owner_records_audience_is_told_file_served_with_ranges(
    running: RunningApp, tmp_path: Path
) -> None:
    room_id = await _live_room(running, public=False)
    told: list[dict[str, Any]] = []
    watcher = socketio.AsyncClient(reconnection=False)
    watcher.on("stream:recording", told.append)
    await watcher.connect(running.url, auth={"token": running.token("alice")}, transports=["websocket"])
    publisher = await _publish(running, room_id)
    try:
        await wait_for(lambda: running.app[AIRWAVE].media.has_publisher(room_id), 10)
        assert "error" not in await watcher.call("stream:join", {"roomId": room_id}, timeout=5)
        # a stranger to the private room sees nothing and starts nothing
        assert (await rest(running, "POST", f"/api/v1/rooms/{room_id}/recording", "bob"))[0] == 404
        outsider = socketio.AsyncClient(reconnection=False)
        await outsider.connect(running.url, auth={"token": running.token("bob")}, transports=["websocket"])
        ack = await outsider.call("recording:start", {"roomId": room_id}, timeout=5)
        assert ack["error"]["code"] == "room_not_found"
        assert (await outsider.call("recording:start", {"roomId": 5}, timeout=5))["error"]["code"] == "bad_request"
        ack = await outsider.call("recording:stop", {"roomId": room_id}, timeout=5)
        assert ack["error"]["code"] == "room_not_found"
        await outsider.disconnect()

        deadline = time.monotonic() + 10
        while (await rest(running, "GET", f"/api/v1/rooms/{room_id}", "alice"))[1]["status"] != "live":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        ack = await watcher.call("recording:start", {"roomId": room_id}, timeout=10)
        assert ack["status"] == "recording" and ack["container"] == "webm", ack
        assert ack["codecs"] == {"video": "vp8", "audio": "opus"}
        recording_id = ack["id"]
        started = time.monotonic()
        status, again = await rest(running, "POST", f"/api/v1/rooms/{room_id}/recording", "alice")
        assert (status, again["code"]) == (409, "already_recording")
        status, room = await rest(running, "GET", f"/api/v1/rooms/{room_id}", "alice")
        assert room["recording"] is True and room["recordingId"] == recording_id and room["record"] is False
        await wait_for(lambda: told, 5)
        assert told[0] == {"roomId": room_id, "on": True, "recordingId": recording_id}

        await asyncio.sleep(4)
        status, done = await rest(running, "DELETE", f"/api/v1/rooms/{room_id}/recording", "alice")
        broadcast = time.monotonic() - started
        assert status == 200 and done["status"] == "complete" and done["endReason"] == "stopped", done
        assert abs(done["duration"] - broadcast) < 1.0 and done["size"] > 10_000
        await wait_for(lambda: len(told) == 2, 5)
        assert told[1]["on"] is False
        assert running.app[AIRWAVE].media.has_publisher(room_id)  # the broadcast goes on
        assert (await rest(running, "GET", f"/api/v1/rooms/{room_id}", "alice"))[1]["recording"] is False

        # the file: whole, and by ranges; not for strangers to the private room
        path = f"/api/v1/recordings/{recording_id}/file"
        status, headers, body = await _get(running, path, "alice")
        assert status == 200 and headers["Content-Type"] == "video/webm" and len(body) == done["size"]
        assert headers.get("Accept-Ranges") == "bytes"
        status, headers, part = await _get(running, path, "alice", {"Range": "bytes=100-199"})
        assert status == 206 and part == body[100:200]
        assert headers["Content-Range"] == f"bytes 100-199/{len(body)}"
        (tmp_path / "got.webm").write_bytes(body)
        recorded = read_recording(tmp_path / "got.webm")
        assert recorded.codecs == {"video": "vp8", "audio": "opus"}
        assert abs(recorded.duration - broadcast) < 1.0
        assert decodes(tmp_path / "got.webm") == 5
        for route in (path, f"/api/v1/recordings/{recording_id}", f"/api/v1/rooms/{room_id}/recordings",
                      f"/api/v1/rooms/{room_id}/recording"):
            assert (await _get(running, route, "bob"))[0] == 404
            assert (await _get(running, route, None))[0] == 401
        status, listing = await rest(running, "GET", f"/api/v1/rooms/{room_id}/recordings", "alice")
        assert [r["id"] for r in listing["recordings"]] == [recording_id]

        # public now: bob may watch and list, not stop or delete
        await rest(running, "PATCH", f"/api/v1/rooms/{room_id}", "alice", {"public": True})
        assert (await _get(running, path, "bob", {"Range": "bytes=0-9"}))[0] == 206
        assert (await rest(running, "DELETE", f"/api/v1/recordings/{recording_id}", "bob"))[0] == 403
        assert (await rest(running, "DELETE", f"/api/v1/rooms/{room_id}/recording", "bob"))[0] == 403
        assert (await rest(running, "PATCH", f"/api/v1/rooms/{room_id}/recording", "bob", {"record": True}))[0] == 403
        status, deleted = await rest(running, "DELETE", f"/api/v1/recordings/{recording_id}", "alice")
        assert status == 200 and deleted == {"id": recording_id, "deleted": True}
        assert (await _get(running, path, "alice"))[0] == 404
    finally:
        await publisher.close()
        await watcher.disconnect()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_record_setting_records_each_broadcast_until_the_publisher_leaves(make_settings) -> None:
    running = await start_app(make_settings(room_publisher_grace=0))
    try:
        room_id = await _live_room(running, public=True)
        status, body = await rest(running, "PATCH", f"/api/v1/rooms/{room_id}/recording", "alice", {"record": True})
        assert status == 200 and body["record"] is True and body["recording"] is False
        status, body = await rest(running, "PATCH", f"/api/v1/rooms/{room_id}/recording", "alice", {"record": 1})
        assert (status, body["code"]) == (400, "bad_record")
        publisher = await _publish(running, room_id)
        deadline = time.monotonic() + 10
        while not (await rest(running, "GET", f"/api/v1/rooms/{room_id}/recording", "bob"))[1]["recording"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        recording_id = (await rest(running, "GET", f"/api/v1/rooms/{room_id}", "bob"))[1]["recordingId"]
        await asyncio.sleep(2)
        await publisher.close()
        done = await _wait_status(running, recording_id, ("complete",))
        assert done["endReason"] in ("publisher_left", "room_ended") and done["startedBy"] is None
        assert done["duration"] > 1.0
    finally:
        await running.server.close()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_full_disk_stops_the_recording_not_the_broadcast(make_settings) -> None:
    running = await start_app(make_settings(recordings_quota_bytes=30_000))
    try:
        room_id = await _live_room(running, public=True)
        publisher = await _publish(running, room_id)
        await wait_for(lambda: running.app[AIRWAVE].media.has_publisher(room_id), 10)
        deadline = time.monotonic() + 10
        while True:
            status, body = await rest(running, "POST", f"/api/v1/rooms/{room_id}/recording", "alice")
            if status == 201:
                break
            assert status == 409 and time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        done = await _wait_status(running, body["id"], ("failed_disk_full",))
        assert "quota" in done["error"] and done["endReason"] == "write_failed"
        assert 0 < done["size"] <= 30_000
        assert running.app[AIRWAVE].media.has_publisher(room_id)
        status, room = await rest(running, "GET", f"/api/v1/rooms/{room_id}", "alice")
        assert room["status"] == "live" and room["recording"] is False
        await publisher.close()
    finally:
        await running.server.close()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_killed_recorder_is_marked_interrupted_at_the_next_start(running: RunningApp) -> None:
    """As after a SIGKILL: the recorder stops without finishing its file; the
    node's next start marks the recording interrupted, and the file plays."""
    service = running.app[AIRWAVE].services.recordings
    room_id = await _live_room(running, public=True)
    publisher = await _publish(running, room_id)
    try:
        await wait_for(lambda: running.app[AIRWAVE].media.has_publisher(room_id), 10)
        await wait_for(lambda: room_id in running.app[AIRWAVE].media.rooms(), 10)
        deadline = time.monotonic() + 10
        while True:
            status, body = await rest(running, "POST", f"/api/v1/rooms/{room_id}/recording", "alice")
            if status == 201:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)
        active = service.active.pop(room_id)  # the process "dies": nothing is finished
        active.recorder.abandon()
        db = running.app[AIRWAVE].db
        # another node's open recording is not this node's to end
        await db.execute("UPDATE recordings SET node_url = $1, node_id = $2 WHERE id = $3",
                         "http://127.0.0.1:9", "elsewhere", body["id"])
        assert await service.recover() == 0
        # the same node id at another address: a worker of serve --workers after the
        # service restarted (its internal port is new, its id is not)
        await db.execute("UPDATE recordings SET node_id = $1 WHERE id = $2",
                         running.app[AIRWAVE].node_id, body["id"])
        assert await service.recover() == 1
        done = await _wait_status(running, body["id"], ("interrupted",))
        assert done["endReason"] == "node_restarted" and done["duration"] > 1.5 and done["size"] > 0
        path = service.storage.local_path(f"{body['id']}.webm")
        assert set(read_recording(path).codecs) == {"video", "audio"}
        assert decodes(path) == 5
        if active.subscriber is not None:
            await active.subscriber.close("test")
    finally:
        await publisher.close()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_a_publisher_back_within_the_grace_continues_the_same_file(make_settings, tmp_path) -> None:
    running = await start_app(make_settings(room_publisher_grace=5))
    try:
        room_id = await _live_room(running, public=True)
        first = await _publish(running, room_id)
        media = running.app[AIRWAVE].media
        await wait_for(lambda: media.has_publisher(room_id), 10)
        deadline = time.monotonic() + 10
        while True:
            status, body = await rest(running, "POST", f"/api/v1/rooms/{room_id}/recording", "alice")
            if status == 201:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        started = time.monotonic()
        await asyncio.sleep(2)
        await first.close()  # a new RTP timeline, new SSRCs: the reconnect
        await wait_for(lambda: not media.has_publisher(room_id), 10)
        await asyncio.sleep(1)
        second = await _publish(running, room_id)
        await wait_for(lambda: media.has_publisher(room_id), 10)
        await asyncio.sleep(2.5)
        status, done = await rest(running, "DELETE", f"/api/v1/rooms/{room_id}/recording", "alice")
        wall = time.monotonic() - started
        await second.close()
        assert status == 200 and done["status"] == "complete", done
        listing = (await rest(running, "GET", f"/api/v1/rooms/{room_id}/recordings", "alice"))[1]
        assert [r["id"] for r in listing["recordings"]] == [body["id"]]
        path = running.app[AIRWAVE].services.recordings.storage.local_path(f"{body['id']}.webm")
        recorded = read_recording(path)
        # the gap stays a gap in time, the timestamps only go forward
        assert abs(recorded.duration - wall) < 1.0, (recorded.duration, wall)
        for times in recorded.times.values():
            assert times == sorted(times)
        video = recorded.times["video"]
        assert max(b - a for a, b in zip(video, video[1:], strict=False)) > 0.8  # the gap
        assert decodes(path, frames=100) == 100  # across the gap
    finally:
        await running.server.close()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_node_shutdown_finishes_the_file_as_interrupted(make_settings) -> None:
    settings = make_settings()
    running = await start_app(settings)
    closed = False
    try:
        room_id = await _live_room(running, public=True)
        publisher = await _publish(running, room_id)
        await wait_for(lambda: running.app[AIRWAVE].media.has_publisher(room_id), 10)
        deadline = time.monotonic() + 10
        while True:
            status, body = await rest(running, "POST", f"/api/v1/rooms/{room_id}/recording", "alice")
            if status == 201:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)
        storage = running.app[AIRWAVE].services.recordings.storage
        await running.server.close()  # the node's shutdown: its hooks run
        closed = True
        await publisher.close()
        running = await start_app(settings)
        closed = False
        status, done = await rest(running, "GET", f"/api/v1/recordings/{body['id']}", "alice")
        assert done["status"] == "interrupted" and done["endReason"] == "shutdown", done
        assert done["duration"] > 1.5
        path = storage.local_path(f"{body['id']}.webm")
        assert decodes(path) == 5 and read_recording(path).duration > 1.5
    finally:
        if not closed:
            await running.server.close()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_retention_deletes_finished_recordings_and_their_files(make_settings) -> None:
    running = await start_app(make_settings(recordings_retention_days=1))
    try:
        service = running.app[AIRWAVE].services.recordings
        room_id = await _live_room(running, public=True)
        now = time.time()
        for recording_id, status, ended in (("rec_" + "a" * 16, "complete", now - 2 * 86400),
                                            ("rec_" + "b" * 16, "complete", now - 3600),
                                            ("rec_" + "c" * 16, "recording", None)):
            with service.storage.open_write(f"{recording_id}.webm") as f:
                f.write(b"x" * 100)
            await service.db.execute(
                "INSERT INTO recordings (id, room_id, status, storage_key, container, node_id, node_url, "
                "started_at, ended_at) VALUES ($1, $2, $3, $4, 'webm', 'n', 'http://x', $5, $6)",
                recording_id, room_id, status, f"{recording_id}.webm", now - 3 * 86400, ended,
            )
        assert await service.sweep() == 1
        status, listing = await rest(running, "GET", f"/api/v1/rooms/{room_id}/recordings", "alice")
        assert sorted(r["id"] for r in listing["recordings"]) == ["rec_" + "b" * 16, "rec_" + "c" * 16]
        assert service.storage.local_path("rec_" + "a" * 16 + ".webm") is None
        assert service.storage.local_path("rec_" + "b" * 16 + ".webm") is not None
    finally:
        await running.server.close()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_recording_changes_are_rate_limited(running: RunningApp) -> None:
    room_id = await _live_room(running, public=True)
    statuses = [
        (await rest(running, "PATCH", f"/api/v1/rooms/{room_id}/recording", "alice", {"record": n % 2 == 0}))
        for n in range(8)
    ]
    assert [s for s, _ in statuses[:4]] == [200] * 4
    limited = [body for s, body in statuses if s == 429]
    assert limited and limited[0]["code"] == "rate_limited"
