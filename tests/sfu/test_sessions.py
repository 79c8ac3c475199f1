"""Errors, capacity, trickle ICE, session ends and resource counts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import threading

import pytest
from prometheus_client import REGISTRY

from sfu import (
    AtCapacity,
    MediaEngine,
    NothingAcceptable,
    PublisherExists,
    RoomNotLive,
    SdpError,
    SessionNotFound,
)

from .conftest import LOOPBACK_SETTINGS
from .sfu_peers import PacketTrack, Publisher, Viewer, client_pc, wait_for


async def _offer(kinds=("video",), direction="sendonly") -> str:
    pc = client_pc()
    for k in kinds:
        pc.addTransceiver(k, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def _live_room(engine: MediaEngine, room: str, frames) -> tuple[Publisher, object]:
    pub = Publisher([PacketTrack("video", frames)])
    session = await engine.publish(room, await pub.offer())
    await pub.accept(session.answer_sdp)
    return pub, session


async def test_error_codes(engine):
    for cls, code, status in [
        (SdpError, "bad_sdp", 400),
        (NothingAcceptable, "no_acceptable_media", 422),
        (PublisherExists, "room_has_publisher", 409),
        (RoomNotLive, "room_not_live", 404),
        (AtCapacity, "at_capacity", 503),
        (SessionNotFound, "session_not_found", 404),
    ]:
        assert cls.code == code and cls.status == status
    with pytest.raises(SdpError):
        await engine.publish("r", "not sdp")
    with pytest.raises(SdpError):
        await engine.publish("r", "")
    with pytest.raises(RoomNotLive):
        await engine.subscribe("nobody", await _offer(direction="recvonly"))
    with pytest.raises(SessionNotFound):
        await engine.close_session("nope")
    with pytest.raises(SessionNotFound):
        await engine.add_remote_candidate("nope", "")
    assert engine.session_count == 0


async def test_nothing_acceptable(engine):
    offer = await _offer(kinds=("audio",))
    # audio with only G.711/G.722 left
    no_opus = re.sub(r"a=rtpmap:96 opus/48000/2\r\n", "", offer).replace(" 96 ", " ")
    no_opus = re.sub(r"(m=audio \d+ \S+) 96", r"\1", no_opus)
    with pytest.raises(NothingAcceptable):
        await engine.publish("r", no_opus)
    # a recvonly offer has nothing to publish
    with pytest.raises(NothingAcceptable):
        await engine.publish("r", await _offer(direction="recvonly"))
    assert engine.session_count == 0 and engine.rooms() == {}


async def test_h264_profiles_from_publishers(engine):
    offer = await _offer()
    # keep only H.264, and make it main profile (4d001f)
    main = offer.replace("42001f", "4d001f").replace("42e01f", "4d001f")
    main = re.sub(r"a=rtpmap:97 VP8/90000\r\n", "", main)
    session = await engine.publish("h", main)
    assert "profile-level-id=4d001f" in session.answer_sdp
    assert "VP8" not in session.answer_sdp
    # a subscriber that can only take baseline cannot watch main profile...
    viewer_offer = await _offer(direction="recvonly")
    only_baseline = re.sub(r"a=rtpmap:97 VP8/90000\r\n", "", viewer_offer)
    with pytest.raises(NothingAcceptable):
        await engine.subscribe("h", only_baseline)
    # ... one that offers main gets it with the publisher's fmtp, under its own payload type
    sub = await engine.subscribe("h", viewer_offer.replace("42e01f", "4d0032"))
    m = re.search(r"a=fmtp:(\d+) (.*profile-level-id=4d001f.*)\r\n", sub.answer_sdp)
    assert m is not None and m.group(1) == "101"  # the viewer's own PT for that entry
    # unknown profiles (e.g. 58 extended) are refused
    with pytest.raises(NothingAcceptable):
        await engine.publish("h2", main.replace("4d001f", "58001f"))
    # packetization-mode 0 is refused
    with pytest.raises(NothingAcceptable):
        await engine.publish("h2", main.replace("packetization-mode=1", "packetization-mode=0"))


async def test_second_publisher_and_capacity(vp8_frames):
    engine = MediaEngine(
        LOOPBACK_SETTINGS.with_overrides(max_subscribers_per_room=2, max_sessions=4),
        connect_timeout=5,
    )
    try:
        pub, _ = await _live_room(engine, "r", vp8_frames)
        with pytest.raises(PublisherExists):
            await engine.publish("r", await _offer())
        await engine.subscribe("r", await _offer(direction="recvonly"))
        await engine.subscribe("r", await _offer(direction="recvonly"))
        with pytest.raises(AtCapacity):  # room full
            await engine.subscribe("r", await _offer(direction="recvonly"))
        assert engine.subscriber_count("r") == 2
        await engine.publish("other", await _offer())
        with pytest.raises(AtCapacity):  # process full
            await engine.publish("third", await _offer())
        assert engine.session_count == 4
        await pub.close()
    finally:
        await engine.close()
    assert engine.session_count == 0


async def test_trickled_candidates(engine, vp8_frames):
    pub = Publisher([PacketTrack("video", vp8_frames)])
    offer = await pub.offer()
    lines = offer.split("\r\n")
    candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
    assert candidates
    bare = "\r\n".join(
        line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    )
    session = await engine.publish("t", bare)
    await pub.accept(session.answer_sdp)
    with pytest.raises(SdpError):
        await engine.add_remote_candidate(session.id, "candidate:garbage")
    for c in candidates:
        await engine.add_remote_candidate(session.id, c)
    await engine.add_remote_candidate(session.id, "")
    await wait_for(lambda: session.state == "connected", 5)
    await wait_for(lambda: session.uptracks[0].packets > 10, 5)
    await pub.close()


async def test_udp_port_range(vp8_frames):
    engine = MediaEngine(LOOPBACK_SETTINGS.with_overrides(udp_ports=(47100, 47109)))
    try:
        ports = set()
        for _ in range(3):
            s = await engine.publish(f"p{_}", await _offer())
            ports.update(
                int(p)
                for p in re.findall(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+)", s.answer_sdp)
            )
        assert ports and all(47100 <= p <= 47109 for p in ports)
        assert len(ports) == 3
    finally:
        await engine.close()


async def test_publisher_leaving_ends_every_viewer(engine, vp8_frames):
    started, ended, closed = [], [], []
    engine.on_publisher_started = lambda room, s: started.append(room)
    engine.on_publisher_ended = lambda room, s, reason: ended.append((room, reason))

    async def on_closed(s, reason):  # observers may be coroutines
        closed.append((s.role, reason))

    engine.on_session_closed = on_closed
    pub, pub_session = await _live_room(engine, "live", vp8_frames)
    viewers = []
    for _ in range(4):
        v = Viewer()
        s = await engine.subscribe("live", await v.offer())
        await v.accept(s.answer_sdp)
        viewers.append((v, s))
    await wait_for(lambda: all(s.state == "connected" for _, s in viewers), 5)
    assert started == ["live"] and engine.has_publisher("live")
    assert engine.subscriber_count("live") == 4
    assert _sample("airwave_sfu_subscribers") >= 4
    forwarded = _sample("airwave_sfu_forwarded_packets_total")
    await wait_for(lambda: pub_session.uptracks[0].forwarded > 40, 5)
    await pub.close()  # the publisher goes away (DTLS close_notify)
    await wait_for(lambda: engine.session_count == 0, 5)
    assert all(s.close_reason == "publisher_left" for _, s in viewers)
    assert pub_session.close_reason == "disconnected"
    # the viewers' own peer connections see the server hang up
    await asyncio.wait_for(asyncio.gather(*(v.closed_by_server.wait() for v, _ in viewers)), 5)
    await asyncio.sleep(0.05)
    assert ended == [("live", "disconnected")]
    assert (
        sorted(closed) == [("publisher", "disconnected")] + [("subscriber", "publisher_left")] * 4
    )
    assert not engine.has_publisher("live") and engine.rooms() == {}
    assert _sample("airwave_sfu_forwarded_packets_total") > forwarded + 40  # flushed on close
    assert _sample("airwave_sfu_forwarded_bytes_total") > 0
    for v, _ in viewers:
        await v.close()


async def test_close_session_and_room(engine, vp8_frames):
    pub, pub_session = await _live_room(engine, "room", vp8_frames)
    v1, v2 = Viewer(), Viewer()
    s1 = await engine.subscribe("room", await v1.offer())
    s2 = await engine.subscribe("room", await v2.offer())
    await v1.accept(s1.answer_sdp)
    await v2.accept(s2.answer_sdp)
    await wait_for(lambda: s1.state == s2.state == "connected", 5)
    await engine.close_session(s1.id, "kicked")
    assert s1.closed and s1.close_reason == "kicked" and engine.session(s1.id) is None
    assert engine.subscriber_count("room") == 1
    await engine.close_room("room")
    assert s2.close_reason == "room_ended" and pub_session.close_reason == "room_ended"
    assert engine.session_count == 0
    for pc in (v1, v2, pub):
        await pc.close()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_unconnected_session_times_out():
    engine = MediaEngine(LOOPBACK_SETTINGS, connect_timeout=0.5)
    failed = {
        r: _sample("airwave_sfu_sessions_failed_total", reason=r)
        for r in ("connect_timeout", "ice_failed")
    }
    try:
        s = await engine.publish("r", await _offer())  # the offerer is gone: nobody connects
        assert _sample("airwave_sfu_publishers") >= 1
        await asyncio.wait_for(s.wait_closed(), 5)
        assert s.close_reason in failed  # connect_timeout, unless aioice gives up first
        reason = s.close_reason
        assert _sample("airwave_sfu_sessions_failed_total", reason=reason) == failed[reason] + 1
    finally:
        await engine.close()


def _udp_sockets() -> int:
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                for line in f.readlines()[1:]:
                    inodes.add(line.split()[9])
        except FileNotFoundError:
            pass
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


async def test_viewers_join_and_leave_without_leaks(engine, vp8_frames):
    pub, pub_session = await _live_room(engine, "loop", vp8_frames)
    await wait_for(lambda: pub_session.state == "connected", 5)
    await asyncio.sleep(0.2)

    def counts():
        gc.collect()
        return (
            threading.active_count(),
            len(asyncio.all_tasks()),
            _udp_sockets(),
            engine.session_count,
        )

    baseline = None
    for round_ in range(5):
        viewers = []
        for _ in range(20):
            v = Viewer()
            s = await engine.subscribe("loop", await v.offer())
            await v.accept(s.answer_sdp)
            viewers.append((v, s))
        sessions = [s for _, s in viewers]
        await wait_for(lambda ss=sessions: all(s.state == "connected" for s in ss), 10)
        assert engine.subscriber_count("loop") == 20
        # half leave from their side, half are closed by the server
        for i, (v, s) in enumerate(viewers):
            if i % 2:
                await engine.close_session(s.id, "left")
            await v.close()
        await wait_for(lambda: engine.subscriber_count("loop") == 0, 5)
        await asyncio.sleep(0.3)
        now = counts()
        if baseline is None:
            baseline = now
            assert now[2] >= 2  # the publisher's and its client's sockets are counted
        assert now == baseline, f"round {round_}: {now} != {baseline}"
    assert pub_session.state == "connected"
    await pub.close()
    await wait_for(lambda: engine.session_count == 0, 5)


async def test_engine_close_leaves_nothing(vp8_frames):
    await asyncio.sleep(0.1)
    gc.collect()
    before = (threading.active_count(), len(asyncio.all_tasks()), _udp_sockets())
    engine = MediaEngine(LOOPBACK_SETTINGS)
    pub, pub_session = await _live_room(engine, "x", vp8_frames)
    viewers = []
    for _ in range(3):
        v = Viewer()
        s = await engine.subscribe("x", await v.offer())
        await v.accept(s.answer_sdp)
        viewers.append(v)
    await wait_for(
        lambda: engine.subscriber_count("x") == 3 and pub_session.state == "connected", 5
    )
    await engine.close()
    assert engine.session_count == 0 and engine.rooms() == {}
    for v in viewers:
        await v.close()
    await pub.close()

    def left() -> tuple[int, int, int]:
        gc.collect()
        return threading.active_count(), len(asyncio.all_tasks()), _udp_sockets()

    # the clients' decoder threads end on their own time on a busy machine
    with contextlib.suppress(AssertionError, TimeoutError):
        await wait_for(lambda: left() == before, 5, 0.1)
    assert left() == before
    with pytest.raises(AtCapacity):
        await engine.publish("y", await _offer())


async def test_dtls_failure_ends_the_session(engine, vp8_frames):
    pub = Publisher([PacketTrack("video", vp8_frames)])
    offer = await pub.offer()
    # the offer promises another certificate than the one the client will show
    wrong = re.sub(
        r"(a=fingerprint:sha-256 )(\S+)", lambda m: m.group(1) + ":".join(["AB"] * 32), offer
    )
    session = await engine.publish("d", wrong)
    await pub.accept(session.answer_sdp)
    await asyncio.wait_for(session.wait_closed(), 10)
    assert session.close_reason in ("dtls_failed", "disconnected")
    assert engine.session_count == 0
    await pub.close()
