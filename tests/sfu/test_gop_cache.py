"""Fast first frame: a late viewer starts from the layer's cached keyframe
and the packets since (no keyframe request while the cache is fresh), one
continuous stream into the live packets; a stale cache is not replayed."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from sfu import MediaEngine

from .sfu_peers import PacketTrack, Publisher, Viewer, vp8_keyframe, wait_for
from .test_feedback import _drop_on_the_wire, _live, _viewer


def _run_of(sent: list[bytes], got: list[bytes]) -> int:
    """Where ``got`` sits in ``sent`` as one unbroken run (-1: it does not)."""
    for start in range(len(sent) - len(got) + 1):
        if sent[start : start + len(got)] == got:
            return start
    return -1


async def test_a_late_viewer_starts_from_the_cached_keyframe_without_a_request(engine, vp8_frames):
    pub, track, session = await _live(engine, "gop", vp8_frames)
    up = session.uptracks[0]
    await wait_for(lambda: up.layers[0].gop_seq is not None and len(track.sent) > 20, 5)
    requests_before = (track.keyframe_requests, up.keyframe_requests)
    sent_before = len(track.sent)
    viewer, vs = await _viewer(engine, "gop")
    await wait_for(lambda: len(viewer.frames["video"]) > 40, 8)
    down = vs.downtracks[0]
    # no keyframe was asked for: the first frame is the publisher's first one, from the cache
    assert (track.keyframe_requests, up.keyframe_requests) == requests_before
    assert down.replayed > 0 and down.stats()["replayed"] == down.replayed
    frames = [f for _, f in viewer.frames["video"]]
    assert vp8_keyframe(frames[0]) and frames[0] == track.sent[0]
    # what it got is one unbroken run of what the publisher sent, from the
    # cached frames (sent before it joined) into the live ones
    assert _run_of(track.sent, frames) == 0
    assert len(frames) > sent_before
    # after the replay it shares the live bytes like any viewer that never switched
    await wait_for(lambda: down in up.layers[0].plain, 2)
    await viewer.close()
    await pub.close()


async def test_a_cached_keyframe_older_than_the_limit_is_not_replayed(settings, vp8_frames):
    engine = MediaEngine(replace(settings, gop_cache_max_age=0.5), connect_timeout=10.0)
    pub, track, session = await _live(engine, "stale", vp8_frames)
    up = session.uptracks[0]
    await wait_for(lambda: up.layers[0].gop_seq is not None, 5)
    await asyncio.sleep(1.0)  # the cached keyframe is now older than 0.5 s
    requests_before = track.keyframe_requests
    sent_at_join = len(track.sent)
    viewer, vs = await _viewer(engine, "stale")
    await wait_for(lambda: len(viewer.frames["video"]) > 3, 5)
    assert track.keyframe_requests > requests_before
    assert vs.downtracks[0].replayed == 0
    frames = [f for _, f in viewer.frames["video"]]
    assert vp8_keyframe(frames[0])
    assert _run_of(track.sent[sent_at_join:], frames) >= 0  # nothing from before the join
    await viewer.close()
    await pub.close()
    await asyncio.wait_for(engine.close(), 10)


async def test_the_cache_is_off_at_age_zero(settings, vp8_frames):
    engine = MediaEngine(replace(settings, gop_cache_max_age=0.0), connect_timeout=10.0)
    pub, track, session = await _live(engine, "off", vp8_frames)
    up = session.uptracks[0]
    await wait_for(lambda: len(track.sent) > 10, 5)
    assert up.layers[0].gop_seq is None
    viewer, vs = await _viewer(engine, "off")
    await wait_for(lambda: len(viewer.frames["video"]) > 3, 5)
    assert vs.downtracks[0].replayed == 0 and track.keyframe_requests >= 1
    await viewer.close()
    await pub.close()
    await asyncio.wait_for(engine.close(), 10)


async def test_audio_starts_live_next_to_a_replayed_video(engine, vp8_frames, opus_frames):
    video, audio = PacketTrack("video", vp8_frames), PacketTrack("audio", opus_frames)
    pub = Publisher([audio, video])
    session = await engine.publish("av", await pub.offer())
    await pub.accept(session.answer_sdp)
    await wait_for(lambda: len(video.sent) > 20, 5)
    audio_at_join = len(audio.sent)
    viewer = Viewer(("audio", "video"))
    vs = await engine.subscribe("av", await viewer.offer())
    await viewer.accept(vs.answer_sdp)
    await wait_for(lambda: len(viewer.payloads["audio"]) > 5 and len(viewer.frames["video"]) > 5, 8)
    assert next(d for d in vs.downtracks if d.up.kind == "video").replayed > 0
    # no audio older than the join (the video's replay reaches live within GOP_CATCH_UP)
    first_audio = viewer.payloads["audio"][0]
    assert first_audio in audio.sent[audio_at_join - 2 :]
    await viewer.close()
    await pub.close()


async def test_a_packet_lost_from_the_replay_is_resent_as_it_was_replayed(engine, vp8_frames):
    """The resent copy carries the squeezed timestamp the replay gave it (else
    the viewer could not put the frame together), in the viewer's RTX stream."""
    pub, track, session = await _live(engine, "gop-nack", vp8_frames)
    up = session.uptracks[0]
    await wait_for(lambda: up.layers[0].gop_seq is not None and len(track.sent) > 20, 5)
    cached_from = up.layers[0].gop_seq
    viewer = Viewer()
    vs = await engine.subscribe("gop-nack", await viewer.offer())
    await viewer.accept(vs.answer_sdp)
    down = vs.downtracks[0]
    receiver = viewer.transceivers[0].receiver
    # lose three packets of the replayed stretch (its first ones are the keyframe)
    replayed = {(cached_from + i) & 0xFFFF for i in (1, 4, 9)}
    dropped, _ = _drop_on_the_wire(
        receiver.transport.transport, down.ssrc, lambda seq: seq in replayed, 3
    )
    await wait_for(lambda: len(viewer.frames["video"]) > 30, 8)
    assert dropped == replayed and down.replayed > 9
    assert down.rtx_payload_type is not None and down.retransmitted >= 3
    frames = [f for _, f in viewer.frames["video"]]
    assert _run_of(track.sent, frames) == 0  # every frame whole, the keyframe first
    await viewer.close()
    await pub.close()
