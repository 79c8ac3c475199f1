"""Simulcast in, one layer out per viewer: layers learned from the rid
extension, one continuous stream per viewer across switches (sequence
numbers, timestamps, VP8 picture ids), and the layer following the viewer's
REMB, down to a pause that keeps the audio."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtp import unwrap_rtx
from prometheus_client import REGISTRY

from sfu import bandwidth
from sfu.track import h264_keyframe_start

from .sfu_media import encoded_h264, encoded_vp8
from .sfu_peers import Viewer, wait_for
from .sfu_simulcast import SimulcastPublisher, quiet_remb, send_remb
from .test_feedback import _drop_on_the_wire, _without_rtx


@pytest.fixture(scope="module")
def layer_frames():
    return [
        encoded_vp8(60, seed=3, size=(80, 60), bit_rate=60_000),
        encoded_vp8(60, seed=4, size=(160, 120), bit_rate=200_000),
        encoded_vp8(60, seed=5, size=(320, 240), bit_rate=700_000),
    ]


class Recorder:
    """What a viewer's receiver got: (seq, ts, marker, payload) per packet."""

    def __init__(self, viewer: Viewer, kind: str = "video") -> None:
        self.packets: list[tuple[int, int, bool, bytes]] = []
        self.rtx: tuple[int, int, int] | None = None  # (RTX pt, media pt, media SSRC)
        self.rtx_packets = 0
        t = next(t for t in viewer.transceivers if t.kind == kind)
        receiver = t.receiver
        quiet_remb(receiver)
        self.receiver = receiver
        handle = receiver._handle_rtp_packet

        async def tap(packet, arrival_time_ms):  # noqa: ANN001
            if self.rtx is not None and packet.payload_type == self.rtx[0]:
                if len(packet.payload) < 2:
                    return await handle(packet, arrival_time_ms)
                self.rtx_packets += 1
                await handle(packet, arrival_time_ms)  # aiortc unwraps it itself
                packet = unwrap_rtx(packet, payload_type=self.rtx[1], ssrc=self.rtx[2])
                self.packets.append(
                    (packet.sequence_number, packet.timestamp, packet.marker, packet.payload)
                )
                return
            self.packets.append(
                (packet.sequence_number, packet.timestamp, packet.marker, packet.payload)
            )
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = tap


async def _publish(engine, room, layer_frames, audio=None):
    pub = SimulcastPublisher(layer_frames, audio)
    session = await engine.publish(room, await pub.offer())
    await pub.accept(session.answer_sdp)
    return pub, session


async def _watch(engine, room, kinds=("video",), *, rtx: bool = True):
    viewer = Viewer(kinds)
    if not rtx:
        for t in viewer.transceivers:
            _without_rtx(t)
    session = await engine.subscribe(room, await viewer.offer())
    await viewer.accept(session.answer_sdp)
    recorder = Recorder(viewer)
    down = next(d for d in session.downtracks if d.up.kind == kinds[0])
    if down.rtx_payload_type is not None:
        recorder.rtx = (down.rtx_payload_type, down.payload_type, down.ssrc)
    return viewer, session, recorder


def _media(packets):
    return [p for p in packets if p[3]]  # padding-only packets have no payload


def _layers(pub, packets):
    """The layer of each media packet (payloads every layer sends alike, such
    as an H.264 PPS, left out)."""
    return [x for x in (pub.layer_of(p[3]) for p in _media(packets)) if x is not None]


def _assert_continuous(packets):
    for (s0, t0, _, _), (s1, t1, _, _) in zip(packets, packets[1:], strict=False):
        assert s1 == (s0 + 1) & 0xFFFF, (s0, s1)
        assert 0 <= (t1 - t0) & 0xFFFFFFFF < 90000 // 2, (t0, t1)
    media = _media(packets)
    for (_, _, _, p0), (_, _, _, p1) in zip(media, media[1:], strict=False):
        pid0 = ((p0[2] & 0x7F) << 8) | p0[3]
        pid1 = ((p1[2] & 0x7F) << 8) | p1[3]
        if p1[0] & 0x10:  # a new frame: the next picture id, the next TL0PICIDX
            assert pid1 == (pid0 + 1) & 0x7FFF, (pid0, pid1)
            assert p1[4] == (p0[4] + 1) & 0xFF
        else:
            assert pid1 == pid0


async def test_layers_are_learned_from_the_rid_extension(engine, layer_frames):
    pub, session = await _publish(engine, "s1", layer_frames)
    answer = session.answer_sdp
    video = answer[answer.index("m=video") :]
    for rid in ("q", "h", "f"):
        assert f"a=rid:{rid} recv" in video
    assert "a=simulcast:recv q;h;f" in video
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in video
    up = session.uptracks[-1]
    assert [layer.rid for layer in up.layers] == ["q", "h", "f"]
    await wait_for(lambda: all(layer.ssrc is not None for layer in up.layers), 5)
    assert [layer.ssrc for layer in up.layers] == [layer.ssrc for layer in pub.layers]
    await wait_for(lambda: all(layer.bitrate > 0 for layer in up.layers), 5)
    rates = [layer.bitrate for layer in up.layers]
    assert rates == sorted(rates)
    await pub.close()


async def test_a_viewer_gets_one_layer_the_top_one_without_an_estimate(engine, layer_frames):
    pub, session = await _publish(engine, "s2", layer_frames)
    up = session.uptracks[-1]
    await wait_for(lambda: all(layer.bitrate > 0 for layer in up.layers), 5)
    viewer, vs, rec = await _watch(engine, "s2")
    await wait_for(lambda: len(rec.packets) > 60, 8)
    layers = _layers(pub, rec.packets)
    assert set(layers) == {2}
    _assert_continuous(rec.packets)
    assert vs.stats()["tracks"][0]["layer"] == 2
    await viewer.close()
    await pub.close()


async def test_a_forced_switch_is_one_continuous_stream(engine, layer_frames):
    pub, session = await _publish(engine, "s3", layer_frames)
    up = session.uptracks[-1]
    await wait_for(lambda: all(layer.bitrate > 0 for layer in up.layers), 5)
    viewer, vs, rec = await _watch(engine, "s3")
    await wait_for(lambda: len(rec.packets) > 30, 8)
    requests = pub.layers[0].keyframe_requests
    switches = REGISTRY.get_sample_value("airwave_sfu_layer_switches_total") or 0.0
    engine.set_max_layer(vs.id, 0)
    await wait_for(lambda: _layers(pub, rec.packets)[-5:] == [0] * 5, 5)
    assert pub.layers[0].keyframe_requests > requests  # the switch asked layer q for one
    layers = _layers(pub, rec.packets)
    first_low = layers.index(0)
    assert set(layers[:first_low]) == {2} and set(layers[first_low:]) == {0}
    switch = _media(rec.packets)[first_low][3]
    assert switch[0] & 0x10 and not switch[5] & 0x01  # starts with a keyframe
    _assert_continuous(rec.packets)
    # and back up when the cap is lifted
    engine.set_max_layer(vs.id, None)
    await wait_for(lambda: _layers(pub, rec.packets)[-5:] == [2] * 5, 5)
    _assert_continuous(rec.packets)
    assert vs.downtracks[0].switches == 2
    assert REGISTRY.get_sample_value("airwave_sfu_layer_switches_total") - switches >= 2
    await viewer.close()
    await pub.close()


async def test_the_layer_follows_the_viewers_remb(engine, layer_frames, monkeypatch):
    monkeypatch.setattr(bandwidth, "UPGRADE_AFTER", 1.0)
    pub, session = await _publish(engine, "s4", layer_frames)
    up = session.uptracks[-1]
    viewer, vs, rec = await _watch(engine, "s4")
    await wait_for(lambda: len(rec.packets) > 30 and all(x.bitrate > 0 for x in up.layers), 8)

    def middle() -> int:
        """An estimate that fits the middle layer with headroom, not the top one
        (from the rates measured now: the test's streams vary)."""
        r1, r2 = up.layers[1].bitrate, up.layers[2].bitrate
        return int((r1 / 0.85 + r2) / 2)

    # room for the middle layer only: down, continuous, and padding probes
    # toward the top layer inside the viewer's own sequence
    for _ in range(150):
        low = middle()
        await send_remb(rec.receiver, low)
        await asyncio.sleep(0.1)
        if _layers(pub, rec.packets)[-3:] == [1] * 3 and any(not p[3] for p in rec.packets):
            break
    assert _layers(pub, rec.packets)[-3:] == [1] * 3
    assert any(not p[3] for p in rec.packets)
    assert abs(vs.stats()["downlink_bps"] - low) < low / 100  # REMB mantissa rounding
    # plenty: up again, after the estimate kept showing room
    for _ in range(100):
        await send_remb(rec.receiver, int(up.layers[2].bitrate * 3))
        await asyncio.sleep(0.1)
        if _layers(pub, rec.packets)[-3:] == [2] * 3:
            break
    assert _layers(pub, rec.packets)[-3:] == [2] * 3
    _assert_continuous(rec.packets)
    await viewer.close()
    await pub.close()


async def test_a_new_viewer_on_a_low_estimate_starts_on_the_lowest_layer(engine, layer_frames):
    """A viewer that subscribed before the publisher's media flowed waits for the top
    layer, which the publisher has not started (Chromium ramps it up later); its first
    estimate is tiny (on audio alone, say). It starts on the lowest layer that flows: a
    pause now, with no stream of its own to pad after, would never end."""
    pub = SimulcastPublisher(layer_frames)
    session = await engine.publish("s-new", await pub.offer())
    viewer, vs, rec = await _watch(engine, "s-new")  # before the publisher connects
    video = vs.downtracks[0]
    await wait_for(lambda: video.wanted is not None, 8)  # connected: waiting for a layer
    assert video.wanted is session.uptracks[0].layers[2] and video.layer is None
    pub.layers = pub.layers[:2]  # the top layer does not start
    await pub.accept(session.answer_sdp)
    up = session.uptracks[0]
    await wait_for(lambda: up.layers[0].bitrate > 0 and up.layers[1].bitrate > 0, 8)
    for _ in range(50):
        await send_remb(rec.receiver, 10_000)
        await asyncio.sleep(0.1)
        if _layers(pub, rec.packets):
            break
    assert _layers(pub, rec.packets)[:1] == [0]  # video came, from the lowest layer
    await viewer.close()
    await pub.close()


async def test_below_the_lowest_layer_video_pauses_and_audio_flows(
    engine, layer_frames, opus_frames
):
    pub, session = await _publish(engine, "s5", layer_frames, audio=opus_frames)
    viewer, vs, rec = await _watch(engine, "s5", kinds=("audio", "video"))
    await wait_for(lambda: len(rec.packets) > 30 and len(viewer.payloads["audio"]) > 10, 8)
    video = next(d for d in vs.downtracks if d.up.kind == "video")
    for _ in range(80):
        await send_remb(rec.receiver, 10_000)
        await asyncio.sleep(0.1)
        if video.paused:
            break
    assert video.paused and vs.stats()["tracks"][1]["paused"]
    assert REGISTRY.get_sample_value("airwave_sfu_paused_viewers") >= 1
    await asyncio.sleep(0.3)
    video_before, audio_before = len(_media(rec.packets)), len(viewer.payloads["audio"])
    await asyncio.sleep(1.0)
    assert len(_media(rec.packets)) == video_before  # (padding may probe for the way back)
    assert len(viewer.payloads["audio"]) > audio_before + 20
    await viewer.close()
    await pub.close()


@pytest.mark.parametrize("rtx", [True, False], ids=["rtx", "plain"])
async def test_nacks_after_a_switch_are_answered_with_our_numbering(engine, layer_frames, rtx):
    """A NACK names the viewer's own sequence numbers; the resent packet is the
    one it lost as it got it, in its RTX stream (OSN: its sequence number)
    when it negotiated RTX, else in the media stream."""
    room = f"s6-{rtx}"
    pub, session = await _publish(engine, room, layer_frames)
    up = session.uptracks[-1]
    await wait_for(lambda: all(layer.bitrate > 0 for layer in up.layers), 5)
    viewer, vs, rec = await _watch(engine, room, rtx=rtx)
    await wait_for(lambda: len(rec.packets) > 30, 8)
    engine.set_max_layer(vs.id, 1)
    await wait_for(lambda: _layers(pub, rec.packets)[-5:] == [1] * 5, 5)
    down = vs.downtracks[0]
    assert down.rewrites  # our sequence numbers are no longer the layer's
    assert (down.rtx_payload_type is not None) == rtx
    start = len(rec.packets)
    dropped, _ = _drop_on_the_wire(
        rec.receiver.transport.transport, down.ssrc, lambda seq: seq % 7 == 3, 10
    )
    # a dropped packet never arrives in the media stream: any copy is a repair
    await wait_for(
        lambda: len(dropped) == 10 and dropped <= {p[0] for p in rec.packets[start:]}, 8
    )
    await asyncio.sleep(0.2)
    # in sequence order, what arrived (resent packets late) is one continuous stream
    after = rec.packets[start:]
    first = after[0][0]
    ordered = sorted(after, key=lambda p: (p[0] - first) & 0xFFFF)
    _assert_continuous(ordered)
    assert all(pub.layer_of(p[3]) == 1 for p in ordered if p[0] in dropped)
    assert down.retransmitted >= 10
    assert (rec.rtx_packets >= 10) == rtx
    await viewer.close()
    await pub.close()


async def test_h264_layers_switch_at_an_idr_without_payload_changes(engine):
    frames = [
        encoded_h264(40, seed=3, size=(96, 64), bit_rate=60_000),
        encoded_h264(40, seed=4, size=(160, 128), bit_rate=200_000),
        encoded_h264(40, seed=5, size=(320, 240), bit_rate=700_000),
    ]
    pub = SimulcastPublisher(frames, codec="h264")
    session = await engine.publish("s7", await pub.offer())
    assert "H264/90000" in session.answer_sdp
    await pub.accept(session.answer_sdp)
    up = session.uptracks[-1]
    await wait_for(lambda: all(layer.bitrate > 0 for layer in up.layers), 5)
    viewer, vs, rec = await _watch(engine, "s7")
    await wait_for(lambda: len(_media(rec.packets)) > 30, 8)
    engine.set_max_layer(vs.id, 0)
    await wait_for(lambda: _layers(pub, rec.packets)[-5:] == [0] * 5, 5)
    layers = _layers(pub, rec.packets)
    first_low = layers.index(0)
    assert set(layers[:first_low]) == {2} and set(layers[first_low:]) == {0}
    first = next(p for p in _media(rec.packets) if pub.layer_of(p[3]) == 0)
    assert h264_keyframe_start(bytes(12) + first[3], 12)
    for (s0, t0, _, _), (s1, t1, _, _) in zip(rec.packets, rec.packets[1:], strict=False):
        assert s1 == (s0 + 1) & 0xFFFF and 0 <= (t1 - t0) & 0xFFFFFFFF < 45000
    await viewer.close()
    await pub.close()
