"""Keyframe requests relayed (rate-limited) and NACKs answered, both ways."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from aiortc import RTCRtpSender
from prometheus_client import REGISTRY

from sfu import MediaEngine

from .sfu_peers import PacketTrack, Publisher, Viewer, drop_rtp, vp8_keyframe, wait_for


def _without_rtx(transceiver) -> None:
    """NACKs then answered in the media stream (RTX: tests/sfu/test_rtx.py)."""
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.name.lower() != "rtx"])


async def _live(engine, room, frames, *, rtx: bool = True):
    track = PacketTrack("video", frames)
    pub = Publisher([track])
    if not rtx:
        _without_rtx(pub.pc.getTransceivers()[0])
    session = await engine.publish(room, await pub.offer())
    await pub.accept(session.answer_sdp)
    await wait_for(lambda: session.state == "connected", 5)
    return pub, track, session


async def _viewer(engine, room, *, rtx: bool = True):
    v = Viewer()
    if not rtx:
        _without_rtx(v.transceivers[0])
    s = await engine.subscribe(room, await v.offer())
    await v.accept(s.answer_sdp)
    return v, s


async def test_late_viewer_gets_a_keyframe_within_2s(settings, vp8_frames):
    # the cached keyframe is older than the cache's age limit: a new one is asked for
    engine = MediaEngine(replace(settings, gop_cache_max_age=1.0), connect_timeout=10.0)
    pub, track, session = await _live(engine, "k", vp8_frames)
    await asyncio.sleep(1.5)  # the publisher's only unrequested keyframe is long gone
    requests_before = track.keyframe_requests
    joined = time.monotonic()
    viewer, vs = await _viewer(engine, "k")
    await wait_for(lambda: any(vp8_keyframe(f) for _, f in viewer.frames["video"]), 2.5)
    first = next(t for t, f in viewer.frames["video"] if vp8_keyframe(f))
    assert first - joined < 2.0
    assert track.keyframe_requests > requests_before
    assert vs.downtracks[0].up.keyframe_requests >= 1
    assert vs.downtracks[0].replayed == 0  # no stale media
    await viewer.close()
    await pub.close()
    await asyncio.wait_for(engine.close(), 10)


async def test_keyframe_requests_are_rate_limited(engine, vp8_frames):
    pub, track, session = await _live(engine, "rl", vp8_frames)
    up = session.uptracks[0]
    start_requests = track.keyframe_requests
    t0 = time.monotonic()
    viewers = [await _viewer(engine, "rl") for _ in range(6)]
    for _ in range(20):  # and a storm of PLIs from the viewers' side
        up.request_keyframe()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    elapsed = time.monotonic() - t0
    relayed = track.keyframe_requests - start_requests
    assert 1 <= relayed <= int(elapsed) + 2, (relayed, elapsed)
    for v, _ in viewers:
        await v.close()
    await pub.close()


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _drop_on_the_wire(ice_transport, ssrc: int, pick, limit: int):
    """Lose some SRTP packets of ``ssrc`` before decryption, as a network
    would (dropping after decryption would make the resent copy an SRTP replay)."""
    dropped: set[int] = set()
    recovered: set[int] = set()

    def drop(packet_ssrc: int, seq: int) -> bool:
        if packet_ssrc != ssrc:
            return False
        if seq in dropped:
            recovered.add(seq)
        elif pick(seq) and len(dropped) < limit:
            dropped.add(seq)
            return True
        return False

    drop_rtp(ice_transport, drop)
    return dropped, recovered


async def test_viewer_nacks_are_answered_from_history(engine, vp8_frames):
    pub, track, session = await _live(engine, "n", vp8_frames)
    viewer, vs = await _viewer(engine, "n", rtx=False)
    await wait_for(lambda: len(viewer.frames["video"]) > 3, 5)
    receiver = viewer.transceivers[0].receiver
    dropped, recovered = _drop_on_the_wire(
        receiver.transport.transport, vs.downtracks[0].ssrc, lambda seq: seq % 7 == 3, 15
    )
    before = _metric("airwave_sfu_retransmitted_packets_total")
    await wait_for(lambda: len(dropped) == 15 and recovered == dropped, 8)
    assert vs.downtracks[0].retransmitted >= 15
    assert _metric("airwave_sfu_retransmitted_packets_total") - before >= 15
    # recovered frames are still the publisher's, bit for bit
    await asyncio.sleep(0.3)
    frames = [f for _, f in viewer.frames["video"]]
    sent = set(track.sent)
    assert all(f in sent for f in frames)
    await viewer.close()
    await pub.close()


async def test_publisher_loss_is_nacked_upstream(engine, vp8_frames):
    pub, track, session = await _live(engine, "u", vp8_frames, rtx=False)
    up = session.uptracks[0]
    await wait_for(lambda: up.packets > 10, 5)
    dropped, recovered = _drop_on_the_wire(session.ice, up.in_ssrc, lambda seq: seq % 5 == 1, 10)
    before = _metric("airwave_sfu_nacks_sent_total")
    await wait_for(lambda: len(dropped) == 10 and recovered == dropped, 8)
    assert _metric("airwave_sfu_nacks_sent_total") > before
    await asyncio.sleep(0.1)
    assert not (set(up.layers[0].missing) & dropped)
    await pub.close()
