"""An edge: one engine pulls a room from another (as a WHEP-style client) and
serves its own viewers from that copy, byte for byte."""

from __future__ import annotations

import asyncio
import hashlib

from aiortc import RTCRtpSender

from sfu import MediaEngine, RoomNotLive

from .sfu_media import nal_units
from .sfu_peers import PacketTrack, Publisher, Viewer, vp8_keyframe, wait_for


def _digest(items) -> set[str]:
    return {hashlib.sha256(x).hexdigest() for x in items}


async def _pull(edge: MediaEngine, origin: MediaEngine, room: str):
    origin_sessions = []

    async def exchange(offer: str) -> str:
        s = await origin.subscribe(room, offer, owner="node:edge")
        origin_sessions.append(s)
        return s.answer_sdp

    pulled = await edge.pull(room, exchange, owner="node:origin")
    return pulled, origin_sessions[0]


async def test_edge_pulls_once_and_forwards_identical_frames(engine, settings, vp8_frames, opus_frames):
    origin = engine
    edge = MediaEngine(settings, connect_timeout=10.0)
    started: list[str] = []
    edge.on_publisher_started = lambda room, s: started.append(room)
    audio, video = PacketTrack("audio", opus_frames), PacketTrack("video", vp8_frames)
    pub = Publisher([audio, video])
    pub_session = await origin.publish("live", await pub.offer(), owner="alice")
    await pub.accept(pub_session.answer_sdp)
    viewers: list[Viewer] = []
    try:
        pulled, at_origin = await _pull(edge, origin, "live")
        assert pulled.pulled and pulled.role == "publisher"
        assert {u.kind for u in pulled.uptracks} == {"audio", "video"}
        for _ in range(2):
            v = Viewer(("audio", "video"))
            s = await edge.subscribe("live", await v.offer(), owner="bob")
            await v.accept(s.answer_sdp)
            viewers.append(v)
        await wait_for(lambda: all(len(v.frames["video"]) >= 20 for v in viewers), 10)
        await wait_for(lambda: all(len(v.payloads["audio"]) >= 20 for v in viewers), 5)
        assert origin.subscriber_count("live") == 1  # one per edge, not per viewer
        assert edge.subscriber_count("live") == 2
        for v in viewers:
            got = [f for _, f in v.frames["video"]]
            assert vp8_keyframe(got[0])
            assert _digest(got) <= _digest(video.sent)
            assert _digest(v.payloads["audio"]) <= _digest(audio.sent)
        assert started == []  # a pulled copy is not a publisher of its own

        # the origin's publisher leaves: the edge's copy and its viewers end
        await pub.close()
        await origin.close_session(pub_session.id, "deleted")
        await asyncio.wait_for(pulled.wait_closed(), 10)
        await wait_for(lambda: edge.subscriber_count("live") == 0, 5)
        assert at_origin.closed
    finally:
        for v in viewers:
            await v.close()
        await pub.close()
        await asyncio.wait_for(edge.close(), 10)
    assert edge.session_count == 0


async def test_edge_pull_of_h264_keeps_profile(engine, settings, h264_frames):
    h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    edge = MediaEngine(settings, connect_timeout=10.0)
    track = PacketTrack("video", h264_frames)
    pub = Publisher([track], codec_prefs={"video": h264})
    pub_session = await engine.publish("h", await pub.offer())
    await pub.accept(pub_session.answer_sdp)
    viewer = Viewer(("video",))
    try:
        pulled, _ = await _pull(edge, engine, "h")
        assert pulled.uptracks[0].codec.mimeType == "video/H264"
        s = await edge.subscribe("h", await viewer.offer())
        await viewer.accept(s.answer_sdp)
        await wait_for(lambda: len(viewer.frames["video"]) >= 10, 10)
        got = [n for _, f in viewer.frames["video"] for n in nal_units(f)]
        assert _digest(got) <= _digest(n for f in track.sent for n in nal_units(f))
    finally:
        await viewer.close()
        await pub.close()
        await asyncio.wait_for(edge.close(), 10)


async def test_pull_of_a_room_without_publisher_fails_cleanly(engine, settings):
    edge = MediaEngine(settings, connect_timeout=10.0)
    try:
        try:
            await _pull(edge, engine, "empty")
        except RoomNotLive:
            pass
        else:
            raise AssertionError("pulling a room that is not live must fail")
        assert edge.session_count == 0 and edge.rooms() == {}
    finally:
        await edge.close()
