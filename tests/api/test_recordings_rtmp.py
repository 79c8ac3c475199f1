"""An RTMP broadcast (FFmpeg: H.264 Main + AAC, made Opus by the ingest) is
recorded like any other: a fragmented MP4 whose samples are FFmpeg's NAL
units, with the broadcast's duration, although RTMP sends no sender reports."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from api.components import AIRWAVE
from tests.api.test_rtmp import PARAMETER_SETS, Broadcaster, live
from tests.conftest import RunningApp, free_port, rest, start_app
from tests.recording.recorded_file import decodes, length_prefixed_units, read_recording
from tests.rooms.room_clients import create_room
from tests.sfu.sfu_peers import wait_for

SECONDS = 10


@pytest.mark.parametrize("backend", ["embedded"])
async def test_an_rtmp_broadcast_is_recorded_to_mp4(make_settings, tmp_path: Path) -> None:
    app: RunningApp = await start_app(make_settings(rtmp_port=free_port(), room_publisher_grace=0))
    broadcaster = Broadcaster(app, tmp_path, "rec")
    try:
        room_id = (await create_room(app, "alice"))["id"]
        await broadcaster.start(f"live/{room_id}?key={app.token('alice', room=room_id, publish=True)}", SECONDS)
        await wait_for(lambda: live(app, room_id), 20)
        deadline = time.monotonic() + 10
        while True:
            status, body = await rest(app, "POST", f"/api/v1/rooms/{room_id}/recording", "alice")
            if status == 201:
                break
            assert status == 409 and time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        started = time.monotonic()
        assert body["container"] == "mp4" and body["codecs"] == {"video": "h264", "audio": "opus"}
        assert await broadcaster.finish(60) == 0, broadcaster.err[-2000:]
        ended = time.monotonic()
        deadline = time.monotonic() + 10
        while (done := (await rest(app, "GET", f"/api/v1/recordings/{body['id']}", "alice"))[1])[
            "status"
        ] == "recording":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert done["status"] == "complete" and done["endReason"] == "publisher_left", done

        path = app.app[AIRWAVE].services.recordings.storage.local_path(f"{body['id']}.mp4")
        recorded = read_recording(path)
        assert recorded.codecs == {"video": "h264", "audio": "opus"}
        assert abs(recorded.duration - (ended - started)) < 1.0, (recorded.duration, ended - started)
        assert decodes(path) == 5
        _, sent = broadcaster.sent()
        samples = [[u for u in length_prefixed_units(p) if u[0] & 0x1F not in PARAMETER_SETS]
                   for p in recorded.packets["video"]]
        start = sent.index(samples[0])
        assert samples == sent[start : start + len(samples)]
    finally:
        await broadcaster.kill()
        await app.server.close()
