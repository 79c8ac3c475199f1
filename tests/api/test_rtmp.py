"""RTMP ingest end to end: FFmpeg (the one inside PyAV, flv muxer to
``rtmp://``) publishes H.264 and AAC; aiortc WHEP viewers receive the very NAL
units FFmpeg sent and Opus audio; Socket.IO hears stream:started and
stream:ended; what browsers cannot play, wrong keys and a second publisher are
refused with a message FFmpeg logs (``Server error: ...``)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import aiortc.codecs
import av
import pytest
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters

from api.components import AIRWAVE
from api.rtmp import INGEST_KEY
from config import Settings
from tests.conftest import RunningApp, free_port, rest, start_app
from tests.rooms.room_clients import connect, create_room
from tests.sfu.sfu_media import nal_units
from tests.sfu.sfu_peers import Viewer, wait_for

PUBLISHER = Path(__file__).with_name("ffmpeg_rtmp_publisher.py")
PARAMETER_SETS = (7, 8)


@pytest.fixture
async def rtmp_app(make_settings: Callable[..., Settings]) -> AsyncIterator[RunningApp]:
    app = await start_app(make_settings(rtmp_port=free_port(), room_publisher_grace=0))
    try:
        yield app
    finally:
        await app.server.close()


@pytest.fixture
def aiortc_receives_h264_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc offers only H.264 constrained baseline and baseline; its
    decoder (FFmpeg's) takes Main too, as browsers do: offer it as well."""
    main = RTCRtpCodecParameters(
        mimeType="video/H264", clockRate=90000, payloadType=103,
        rtcpFeedback=[RTCRtcpFeedback(type="nack"), RTCRtcpFeedback(type="nack", parameter="pli")],
        parameters={"level-asymmetry-allowed": "1", "packetization-mode": "1",
                    "profile-level-id": "4d001f"},
    )
    monkeypatch.setitem(aiortc.codecs.CODECS, "video", [*aiortc.codecs.CODECS["video"], main])


class Broadcaster:
    """One FFmpeg publishing subprocess."""

    def __init__(self, app: RunningApp, tmp_path: Path, name: str) -> None:
        self.port = app.settings.rtmp_port
        self.nals = tmp_path / f"{name}.jsonl"
        self.proc: asyncio.subprocess.Process | None = None
        self.out = self.err = ""

    async def start(self, path: str, seconds: float, profile: str = "main", bframes: int = 0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(PUBLISHER), f"rtmp://127.0.0.1:{self.port}/{path}", str(seconds),
            profile, str(bframes), str(self.nals),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )

    async def finish(self, within: float = 60) -> int:
        assert self.proc is not None
        out, err = await asyncio.wait_for(self.proc.communicate(), within)
        self.out, self.err = out.decode(), err.decode()
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def sent(self) -> tuple[list[bytes], list[list[bytes]]]:
        lines = [json.loads(line) for line in self.nals.read_text().splitlines()]
        units = [[bytes.fromhex(u) for u in line] for line in lines]
        return units[0], units[1:]


async def watch(app: RunningApp, room: str) -> Viewer:
    viewer = Viewer(("video", "audio"))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{app.url}/whep/{room}", data=await viewer.offer(),
            headers={"Content-Type": "application/sdp",
                     "Authorization": f"Bearer {app.token('viewer', room=room, subscribe=True)}"},
        ) as r:
            answer = await r.text()
            assert r.status == 201, answer
    assert "H264/90000" in answer and "opus/48000" in answer
    await viewer.accept(answer)
    return viewer


def loudest_sample(opus_frames: list[bytes]) -> int:
    decoder = av.CodecContext.create("opus", "r")
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
    loudest = 0
    for data in opus_frames:
        for frame in decoder.decode(av.Packet(data)):
            for pcm in resampler.resample(frame):
                loudest = max(loudest, int(abs(pcm.to_ndarray()).max()))
    return loudest


def live(app: RunningApp, room: str) -> bool:
    info = app.app[AIRWAVE].media.rooms().get(room)
    return info is not None and info.live


@pytest.mark.parametrize("backend", ["embedded"])
@pytest.mark.timeout(120)
async def test_ffmpeg_publishes_h264_main_and_aac_for_30s_to_whep_and_socketio(
    rtmp_app: RunningApp, tmp_path: Path, aiortc_receives_h264_main: None
) -> None:
    room = await create_room(rtmp_app, "alice")
    room_id = room["id"]
    bob = await connect(rtmp_app, "bob")
    await bob.call("stream:join", {"roomId": room_id})
    broadcaster = Broadcaster(rtmp_app, tmp_path, "main")
    token = rtmp_app.token("alice", room=room_id, publish=True)
    viewer: Viewer | None = None
    try:
        await broadcaster.start(f"live/{room_id}?key={token}", 30)
        started = await bob.wait("stream:started", within=20)
        assert started["roomId"] == room_id and started["resumed"] is False
        viewer = await watch(rtmp_app, room_id)
        assert await broadcaster.finish(90) == 0, broadcaster.err[-2000:]
        ended = await bob.wait("stream:ended", within=10)
        assert ended == {"roomId": room_id, "reason": "publisher_gone"}
        await wait_for(lambda: viewer is not None and viewer.closed_by_server.is_set(), 10)

        parameter_sets, sent = broadcaster.sent()
        received = [nal_units(data) for _, data in viewer.frames["video"]]
        assert len(received) > 20 * 30, f"{len(received)} of about 870 frames"  # joined ~1 s in
        # Each keyframe comes with the SPS and PPS of FFmpeg's sequence header.
        assert received[0][: len(parameter_sets)] == parameter_sets
        # Every frame's NAL units are those of one FFmpeg frame, in FFmpeg's order.
        position = 0
        for units in received:
            units = [u for u in units if u[0] & 0x1F not in PARAMETER_SETS]
            position = sent.index(units, position) + 1
        # Opus made from FFmpeg's AAC tone decodes to a loud signal.
        assert len(viewer.frames["audio"]) > 20 * 50
        assert loudest_sample([data for _, data in viewer.frames["audio"]]) > 2000
    finally:
        await broadcaster.kill()
        if viewer is not None:
            await viewer.close()
        await bob.close()


@pytest.mark.parametrize("backend", ["embedded"])
@pytest.mark.parametrize(("profile", "bframes", "message"), [
    ("high", 0, "Server error: H.264 High profile is refused: browsers' WebRTC decodes Baseline and Main"),
    ("main", 2, "Server error: H.264 with B-frames is refused"),
    ("hevc", 0, "Server error: video codec 'hvc1' is refused: send H.264 (Baseline or Main profile)"),
])
async def test_what_browsers_cannot_play_is_refused_and_the_room_stays_not_live(
    rtmp_app: RunningApp, tmp_path: Path, profile: str, bframes: int, message: str
) -> None:
    room_id = "refused-" + profile
    broadcaster = Broadcaster(rtmp_app, tmp_path, profile)
    token = rtmp_app.token("alice", room=room_id, publish=True)
    seen_live = False
    try:
        await broadcaster.start(f"live/{room_id}?key={token}", 10, profile, bframes)
        done = asyncio.ensure_future(broadcaster.finish(40))
        while not done.done():
            seen_live = seen_live or live(rtmp_app, room_id)
            await asyncio.sleep(0.02)
        assert done.result() == 3
        assert message in broadcaster.err, broadcaster.err[-2000:]
        assert not seen_live
        _, room = await rest(rtmp_app, "GET", f"/api/v1/rooms/{room_id}", "alice")
        assert room.get("status") != "live"
    finally:
        await broadcaster.kill()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_stream_key_publish_conflict_rotation_and_wrong_keys(
    rtmp_app: RunningApp, tmp_path: Path
) -> None:
    room = await create_room(rtmp_app, "alice")
    room_id = room["id"]
    status, made = await rest(rtmp_app, "POST", f"/api/v1/rooms/{room_id}/stream-key", "alice")
    assert status == 201 and made["streamKey"].startswith("sk_")
    assert made["rtmpUrl"] == f"rtmp://127.0.0.1:{rtmp_app.settings.rtmp_port}/live/{room_id}"
    first = Broadcaster(rtmp_app, tmp_path, "first")
    second = Broadcaster(rtmp_app, tmp_path, "second")
    wrong = Broadcaster(rtmp_app, tmp_path, "wrong")
    try:
        # a wrong stream key, then a token without the publish grant
        await wrong.start(f"live/{room_id}?key=sk_not-the-key", 5)
        assert await wrong.finish() == 3
        assert f"Server error: the stream key is not valid for room '{room_id}'" in wrong.err
        await wrong.start(f"live/{room_id}/{rtmp_app.token('mallory', room=room_id, subscribe=True)}", 5)
        assert await wrong.finish() == 3
        assert f"Server error: the token does not grant publish for room '{room_id}'" in wrong.err
        assert not live(rtmp_app, room_id)

        # OBS's form: server rtmp://host/live/ROOM, stream key = the room's key
        await first.start(f"live/{room_id}/{made['streamKey']}", 30)
        await wait_for(lambda: live(rtmp_app, room_id), 20)
        connection = rtmp_app.app[INGEST_KEY][0].publishing(room_id)
        assert connection is not None and connection.owner == "alice"  # as the room's owner

        # a second publisher gets WHIP's conflict
        await second.start(f"live/{room_id}?key={rtmp_app.token('alice', room=room_id, publish=True)}", 5)
        assert await second.finish() == 3
        assert f"Server error: room '{room_id}' already has a publisher" in second.err

        # making a new key ends the publish that used the old one
        status, remade = await rest(rtmp_app, "POST", f"/api/v1/rooms/{room_id}/stream-key", "alice")
        assert status == 201 and remade["streamKey"] != made["streamKey"]
        assert await first.finish() == 3
        assert "Server error: the stream key was replaced" in first.err
        await wait_for(lambda: not live(rtmp_app, room_id), 5)
        await wrong.start(f"live/{room_id}/{made['streamKey']}", 5)
        assert await wrong.finish() == 3 and "stream key is not valid" in wrong.err

        status, _ = await rest(rtmp_app, "DELETE", f"/api/v1/rooms/{room_id}/stream-key", "alice")
        assert status == 200
        async with aiohttp.ClientSession() as http:
            async with http.get(rtmp_app.url + "/metrics") as r:
                metrics = await r.text()
        lines = metrics.splitlines()
        assert any(line.startswith("airwave_rtmp_refused_total{")
                   and 'code="NetStream.Publish.BadName"' in line for line in lines)
        assert any(line.startswith("airwave_rtmp_publishing{") and line.endswith(" 0.0")
                   for line in lines)
        status, body = await rest(rtmp_app, "DELETE", f"/api/v1/rooms/{room_id}/stream-key", "alice")
        assert status == 404 and body["code"] == "stream_key_not_found"
    finally:
        for b in (first, second, wrong):
            await b.kill()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_ending_the_room_ends_the_rtmp_publish_with_a_reason(
    rtmp_app: RunningApp, tmp_path: Path
) -> None:
    room = await create_room(rtmp_app, "alice")
    broadcaster = Broadcaster(rtmp_app, tmp_path, "ended")
    try:
        await broadcaster.start(
            f"live/{room['id']}?key={rtmp_app.token('alice', room=room['id'], publish=True)}", 30)
        await wait_for(lambda: live(rtmp_app, room["id"]), 20)
        status, _ = await rest(rtmp_app, "POST", f"/api/v1/rooms/{room['id']}/end", "alice")
        assert status == 200
        assert await broadcaster.finish() == 3
        assert "Server error: publishing ended: room_ended" in broadcaster.err
        assert not live(rtmp_app, room["id"])
    finally:
        await broadcaster.kill()


async def test_only_the_owner_or_an_admin_manages_stream_keys(rtmp_app: RunningApp) -> None:
    room = await create_room(rtmp_app, "alice")
    path = f"/api/v1/rooms/{room['id']}/stream-key"
    status, body = await rest(rtmp_app, "POST", path, "mallory")
    assert status == 403 and set(body) == {"status", "code", "message", "requestId"}
    status, _ = await rest(rtmp_app, "DELETE", path, "mallory")
    assert status == 403
    status, _ = await rest(rtmp_app, "POST", path, None)
    assert status == 401
    status, _ = await rest(rtmp_app, "POST", "/api/v1/rooms/nope/stream-key", "alice")
    assert status == 404
    status, body = await rest(rtmp_app, "POST", path, "root", admin=True)
    assert status == 201
    stored = await rtmp_app.app[AIRWAVE].db.fetchval(
        "SELECT key_hash FROM room_stream_keys WHERE room_id = $1", room["id"])
    assert stored and body["streamKey"] not in stored  # only the hash is kept
    codes = [(await rest(rtmp_app, "POST", path, "alice"))[0] for _ in range(8)]
    assert 429 in codes


def test_rtmp_is_off_by_default() -> None:
    assert Settings().rtmp_port == 0
