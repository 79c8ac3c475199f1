"""FFmpeg's WHIP client publishes H.264 + Opus for 30 s while the room is
recorded: the fragmented MP4 has both streams, the broadcast's duration, and
the H.264 access units a WebRTC viewer received, NAL unit for NAL unit."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from api.components import AIRWAVE
from recording.frames import annexb_units
from tests.api.test_ffmpeg_whip import p256_certificate
from tests.conftest import rest, start_app
from tests.recording.recorded_file import decodes, length_prefixed_units, read_recording
from tests.sfu.sfu_peers import Viewer, wait_for

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

PUBLISH_SECONDS = 30
PARAMETER_SETS = (7, 8)


def _units(frames: list[list[bytes]]) -> list[list[bytes]]:
    return [[u for u in f if u[0] & 0x1F not in PARAMETER_SETS] for f in frames]


async def test_ffmpeg_h264_and_opus_recorded_to_mp4(make_settings, tmp_path: Path) -> None:
    running = await start_app(make_settings(room_publisher_grace=0))
    cert, key = p256_certificate(tmp_path)
    status, room = await rest(running, "POST", "/api/v1/rooms", "ffmpeg", {"type": "live", "public": True})
    room_id = room["id"]
    script = Path(__file__).with_name("ffmpeg_whip_publisher.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), f"{running.url}/whip/{room_id}",
        running.token("ffmpeg", room=room_id, publish=True), str(PUBLISH_SECONDS), str(cert), str(key),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    engine = running.app[AIRWAVE].media
    viewer = Viewer(("video", "audio"))
    try:
        await wait_for(lambda: engine.rooms().get(room_id) is not None and engine.rooms()[room_id].live, 20)
        deadline = time.monotonic() + 10
        while True:
            status, recording = await rest(running, "POST", f"/api/v1/rooms/{room_id}/recording", "ffmpeg")
            if status == 201:
                break
            assert status == 409 and time.monotonic() < deadline, recording
            await asyncio.sleep(0.1)
        started = time.monotonic()
        assert recording["container"] == "mp4" and recording["codecs"] == {"video": "h264", "audio": "opus"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{running.url}/whep/{room_id}", data=await viewer.offer(),
                headers={"Content-Type": "application/sdp",
                         "Authorization": f"Bearer {running.token('v', room=room_id, subscribe=True)}"},
            ) as r:
                answer = await r.text()
                assert r.status == 201, answer
        await viewer.accept(answer)

        out, err = await asyncio.wait_for(proc.communicate(), PUBLISH_SECONDS + 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        ended = time.monotonic()
        deadline = time.monotonic() + 15
        while True:
            status, done = await rest(running, "GET", f"/api/v1/recordings/{recording['id']}", "ffmpeg")
            if done["status"] != "recording":
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert done["status"] == "complete" and done["endReason"] == "publisher_left", done
        broadcast = ended - started
        assert broadcast > PUBLISH_SECONDS - 5

        path = running.app[AIRWAVE].services.recordings.storage.local_path(f"{recording['id']}.mp4")
        recorded = read_recording(path)
        assert recorded.codecs == {"video": "h264", "audio": "opus"}
        assert abs(recorded.duration - broadcast) < 1.0, (recorded.duration, broadcast)
        assert abs(done["duration"] - recorded.duration) < 0.5
        assert decodes(path) == 5
        # parameter sets went into the header (avcC), the samples are what a viewer got
        assert recorded.extradata["video"][:1] == b"\x01"
        samples = _units([length_prefixed_units(p) for p in recorded.packets["video"]])
        received = _units([annexb_units(f) for _, f in viewer.frames["video"]])
        assert len(received) > 100
        # the viewer joined after the recording started, but from the GOP cache: it
        # may start at a keyframe before the recording's first one
        before = [i for i in range(len(received)) if received[i : i + 8] == samples[:8]]
        if before:
            start, first = 0, before[0]
        else:
            start, first = samples.index(received[0]), 0
        overlap = min(len(samples) - start, len(received) - first)
        assert overlap > 100
        assert samples[start : start + overlap] == received[first : first + overlap]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await viewer.close()
        await running.server.close()
