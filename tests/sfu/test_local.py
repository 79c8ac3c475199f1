"""A local publisher (``MediaEngine.publish_local``, sfu/local.py): RTP bytes
handed in by this process reach WebRTC subscribers as from any publisher,
the observers fire, viewers' keyframe requests come back as a callback."""

from __future__ import annotations

import asyncio

import pytest

from ingest.aac import opus_codec
from ingest.avc import AvcConfig, H264Packetizer
from sfu import MediaEngine, NothingAcceptable, PublisherExists

from .sfu_media import nal_units
from .sfu_peers import Viewer, wait_for


def _config(first_frame: bytes) -> AvcConfig:
    units = nal_units(first_frame)
    sps = next(u for u in units if u[0] & 0x1F == 7)
    pps = next(u for u in units if u[0] & 0x1F == 8)
    return AvcConfig(sps[1], sps[2], sps[3], 4, (sps,), (pps,))


async def test_local_publisher_feeds_subscribers_and_hears_their_keyframe_requests(
    engine: MediaEngine, h264_frames
) -> None:
    events: list[tuple[str, str]] = []
    engine.on_publisher_started = lambda room, s: events.append(("started", room))
    engine.on_publisher_ended = lambda room, s, reason: events.append(("ended", reason))
    config = _config(h264_frames[0].data)
    publisher = engine.publish_local(
        "r", owner="alice", tracks=[("video", config.codec()), ("audio", opus_codec())]
    )
    requests: list[str] = []
    publisher.on_keyframe_request = requests.append
    assert events == [("started", "r")] and engine.rooms()["r"].live
    with pytest.raises(PublisherExists):
        engine.publish_local("r", tracks=[("video", config.codec())])

    viewer = Viewer(("video",))
    session = await engine.subscribe("r", await viewer.offer(), owner="bob")
    await viewer.accept(session.answer_sdp)
    assert "profile-level-id=" + config.profile_level_id in session.answer_sdp
    packetizer = H264Packetizer(config)
    sent: list[list[bytes]] = []

    async def feed() -> None:
        for i, frame in enumerate(h264_frames):
            units = [u for u in nal_units(frame.data) if u[0] & 0x1F not in (7, 8)]
            sent.append(units)
            for packet in packetizer.packetize(units, i * 33):
                publisher.send("video", packet)
            await asyncio.sleep(1 / 30)

    await viewer.connected.wait()
    await wait_for(lambda: session.state == "connected", 5)  # its down track waits for a keyframe
    await feed()
    await wait_for(lambda: len(viewer.frames["video"]) >= 10, 10)
    # the subscriber's join asked for a keyframe; RTMP-like sources only count it
    assert requests and requests[0] == "video" and publisher.keyframe_requests >= 1
    received = [[u for u in nal_units(f) if u[0] & 0x1F not in (7, 8)] for _, f in viewer.frames["video"]]
    start = sent.index(received[0])
    assert received == sent[start : start + len(received)]
    assert nal_units(viewer.frames["video"][0][1])[:2] == [config.sps[0], config.pps[0]]

    await publisher.close("deleted")
    await wait_for(lambda: session.closed, 5)
    assert session.close_reason == "publisher_left"
    assert events[-1] == ("ended", "deleted") and "r" not in engine.rooms()
    await viewer.close()


async def test_local_publisher_refuses_what_cannot_be_forwarded(engine: MediaEngine) -> None:
    codec = opus_codec()
    codec.clockRate = 44100
    with pytest.raises(NothingAcceptable):
        engine.publish_local("r", tracks=[("audio", codec)])
    with pytest.raises(NothingAcceptable):
        engine.publish_local("r", tracks=[])
    assert engine.session_count == 0
