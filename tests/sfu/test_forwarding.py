"""Forwarding, not connectivity: what viewers receive is byte-identical to what
the publisher sent, and the server never decodes or encodes."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import aiortc.codecs
import av
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpsender import RTCRtpSender as _Sender

import sfu
from sfu import MediaEngine

from .sfu_media import nal_units
from .sfu_peers import PacketTrack, Publisher, Viewer, vp8_keyframe, wait_for

SFU_DIR = str(Path(sfu.__file__).parent)


def _digest(items) -> set[str]:
    return {hashlib.sha256(x).hexdigest() for x in items}


@pytest.fixture
def server_codec_guard(monkeypatch):
    """Record any decoder/encoder/codec context created from code in sfu/."""
    created: list[str] = []

    def from_sfu() -> bool:
        return any(f.filename.startswith(SFU_DIR) for f in inspect.stack()[2:])

    for name in ("get_decoder", "get_encoder"):
        original = getattr(aiortc.codecs, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            if from_sfu():
                created.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(aiortc.codecs, name, wrapper)
    for cls in (RTCRtpReceiver, RTCRtpSender):
        init = cls.__init__

        def init_wrapper(self, *args, _init=init, _cls=cls, **kwargs):
            if from_sfu():
                created.append(_cls.__name__)
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init_wrapper)
    create = av.CodecContext.create

    def create_wrapper(*args, **kwargs):
        if from_sfu():
            created.append("CodecContext")
        return create(*args, **kwargs)

    monkeypatch.setattr(av.CodecContext, "create", create_wrapper)
    return created


async def _publish(engine: MediaEngine, room: str, tracks, **kw) -> tuple[Publisher, sfu.Session]:
    pub = Publisher(tracks, **kw)
    session = await engine.publish(room, await pub.offer(), owner="alice")
    await pub.accept(session.answer_sdp)
    return pub, session


async def _watch(engine: MediaEngine, room: str, kinds=("video",)) -> tuple[Viewer, sfu.Session]:
    viewer = Viewer(kinds)
    session = await engine.subscribe(room, await viewer.offer(), owner="bob")
    await viewer.accept(session.answer_sdp)
    return viewer, session


def _server_has_no_codec_objects(engine: MediaEngine) -> None:
    """No aiortc receiver (decoder thread) or sender (encoder) hangs off a server session."""
    for s in engine._sessions.values():
        for value in vars(s).values():
            assert not isinstance(value, (RTCRtpReceiver, _Sender))


async def test_vp8_frames_reach_viewers_byte_identical(engine, vp8_frames, server_codec_guard):
    track = PacketTrack("video", vp8_frames)
    pub, pub_session = await _publish(engine, "r1", [track])
    viewers = [await _watch(engine, "r1") for _ in range(3)]
    try:
        await wait_for(lambda: pub_session.state == "connected", 5)
        await wait_for(lambda: all(len(v.frames["video"]) >= 30 for v, _ in viewers), 10)
        sent = _digest(track.sent)
        sent_payloads = _digest(pub.sent_payloads)
        for viewer, session in viewers:
            assert session.state == "connected"
            got = [f for _, f in viewer.frames["video"]]
            # every reassembled frame is one the publisher sent, bit for bit
            assert _digest(got) <= sent
            assert vp8_keyframe(got[0])  # a viewer starts with a keyframe
            # and so is every RTP payload
            assert _digest(viewer.payloads["video"]) <= sent_payloads
        assert pub_session.uptracks[0].forwarded >= 3 * 30
        assert server_codec_guard == []
        _server_has_no_codec_objects(engine)
    finally:
        for v, _ in viewers:
            await v.close()
        await pub.close()


async def test_h264_frames_reach_viewers_byte_identical(engine, h264_frames, server_codec_guard):
    h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    track = PacketTrack("video", h264_frames)
    pub, pub_session = await _publish(engine, "h", [track], codec_prefs={"video": h264})
    assert "H264" in pub_session.answer_sdp
    viewers = [await _watch(engine, "h") for _ in range(2)]
    try:
        await wait_for(lambda: all(len(v.frames["video"]) >= 20 for v, _ in viewers), 10)
        sent_nals = _digest(n for f in track.sent for n in nal_units(f))
        for viewer, session in viewers:
            assert "H264" in session.answer_sdp
            first = nal_units(viewer.frames["video"][0][1])
            assert first[0][0] & 0x1F == 7  # starts with SPS, then the IDR
            assert 5 in {n[0] & 0x1F for n in first}
            got = [n for _, f in viewer.frames["video"] for n in nal_units(f)]
            assert got and _digest(got) <= sent_nals
            assert _digest(viewer.payloads["video"]) <= _digest(pub.sent_payloads)
        assert server_codec_guard == []
    finally:
        for v, _ in viewers:
            await v.close()
        await pub.close()


async def test_opus_and_vp8_together(engine, vp8_frames, opus_frames, server_codec_guard):
    audio = PacketTrack("audio", opus_frames)
    video = PacketTrack("video", vp8_frames)
    pub, pub_session = await _publish(engine, "av", [audio, video])
    viewer, session = await _watch(engine, "av", kinds=("audio", "video"))
    try:
        await wait_for(
            lambda: len(viewer.frames["audio"]) >= 20 and len(viewer.frames["video"]) >= 10, 10
        )
        assert _digest(f for _, f in viewer.frames["audio"]) <= _digest(audio.sent)
        assert _digest(f for _, f in viewer.frames["video"]) <= _digest(video.sent)
        assert "opus/48000/2" in session.answer_sdp
        assert server_codec_guard == []
    finally:
        await viewer.close()
        await pub.close()
