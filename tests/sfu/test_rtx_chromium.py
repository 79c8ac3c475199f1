"""A Chromium viewer on a link that loses 3 % of what the server sends it
(the test puts a loss injector in the server's send path to that one
subscriber, by retargeting its down track): the server repairs over RTX and
the picture does not freeze. Runs Chromium for 30 s and encodes 45 s of
VP8 first: run it alone."""

from __future__ import annotations

import asyncio
import random

from tests.webapp.browser import chromium, until

from .sfu_media import encoded_vp8
from .sfu_peers import PacketTrack, Publisher, drop_rtp, wait_for

LOSS = 0.03
SECONDS = 30

OFFER = """async () => {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  pc.addTransceiver("video", {direction: "recvonly"});
  const video = document.createElement("video");
  video.autoplay = true;
  video.muted = true;
  document.body.appendChild(video);
  pc.ontrack = (e) => { video.srcObject = new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
    setTimeout(done, 3000);
  });
  return pc.localDescription.sdp;
}"""

VIDEO_STATS = """async () => {
  let found = null;
  (await window.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") found = r;
  });
  return found && {
    framesDecoded: found.framesDecoded || 0,
    packetsReceived: found.packetsReceived || 0,
    packetsLost: found.packetsLost || 0,
    nackCount: found.nackCount || 0,
    retransmittedPacketsReceived: found.retransmittedPacketsReceived,
    totalFreezesDuration: found.totalFreezesDuration || 0,
    freezeCount: found.freezeCount || 0,
  };
}"""


async def _decoded_more_than(page, frames: int) -> bool:
    stats = await page.evaluate(VIDEO_STATS)
    return bool(stats) and stats["framesDecoded"] > frames


class LossySend:
    """The server's sendto toward one subscriber, losing ``loss`` of the
    datagrams (media, repairs and all) at random."""

    def __init__(self, sendto, loss: float, seed: int) -> None:
        self._sendto = sendto
        self._loss = loss
        self._rng = random.Random(seed)
        self.sent = 0
        self.dropped = 0

    def __call__(self, data: bytes, addr) -> None:
        self.sent += 1
        if self._rng.random() < self._loss:
            self.dropped += 1
            return
        self._sendto(data, addr)


async def test_chromium_viewer_with_3_percent_loss_is_repaired_over_rtx(engine):
    # longer than the test: the picture never loops back to a frame whose
    # references Chromium's decoder does not have (it asks for a keyframe then)
    frames = await asyncio.to_thread(encoded_vp8, (SECONDS + 15) * 30)
    track = PacketTrack("video", frames)
    pub = Publisher([track])
    published = await engine.publish("chromium-rtx", await pub.offer())
    await pub.accept(published.answer_sdp)
    await wait_for(lambda: published.state == "connected", 5)
    try:
        async with chromium(grant_media=False) as browser:
            page = await browser.new_page()
            offer = await page.evaluate(OFFER)
            assert "rtx/90000" in offer
            session = await engine.subscribe("chromium-rtx", offer)
            await page.evaluate(
                "sdp => window.pc.setRemoteDescription({type: 'answer', sdp})", session.answer_sdp
            )
            down = session.downtracks[0]
            assert down.rtx_payload_type is not None
            await wait_for(lambda: down.target is not None, 10)
            protect, sendto, addr = down.target
            lossy = LossySend(sendto, LOSS, seed=3)
            down.retarget((protect, lossy, addr))
            await until(
                lambda: _decoded_more_than(page, 30), 10, "Chromium decoding the stream"
            )
            before = await page.evaluate(VIDEO_STATS)
            await asyncio.sleep(SECONDS)
            after = await page.evaluate(VIDEO_STATS)
            assert down.target is not None and down.target[1] is lossy  # loss stayed in the path
            await page.close()
    finally:
        await pub.close()

    frozen = after["totalFreezesDuration"] - before["totalFreezesDuration"]
    decoded = after["framesDecoded"] - before["framesDecoded"]
    print(f"chromium RTX: PLI {down.keyframe_requests} keyframes {track.keyframe_requests} "
          f"sent {lossy.sent} dropped {lossy.dropped} retransmitted "
          f"{down.retransmitted} stats {before} -> {after}")
    assert lossy.dropped > 0.01 * lossy.sent, (lossy.dropped, lossy.sent)
    assert down.retransmitted > 0
    assert after["retransmittedPacketsReceived"] > 0, after
    assert decoded > 20 * SECONDS * 0.9, (before, after)
    assert frozen < 0.02 * SECONDS, (before, after)


PUBLISH = """async () => {
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}});
  const pc = new RTCPeerConnection();
  window.pc = pc;
  pc.addTransceiver(stream.getVideoTracks()[0], {direction: "sendonly"});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
    setTimeout(done, 3000);
  });
  return pc.localDescription.sdp;
}"""

SENT_STATS = """async () => {
  let found = null;
  (await window.pc.getStats()).forEach((r) => {
    if (r.type === "outbound-rtp" && r.kind === "video") found = r;
  });
  return found && {packetsSent: found.packetsSent, nackCount: found.nackCount,
                   retransmittedPacketsSent: found.retransmittedPacketsSent};
}"""


async def test_chromium_publisher_repairs_over_rtx_what_the_server_lost(engine):
    async with chromium(grant_media=True) as browser:
        page = await browser.new_page()
        # a page at http://localhost is a secure context: getUserMedia works
        await page.route("http://localhost:8/**", lambda route: route.fulfill(
            body="<!doctype html><title>publisher</title>", content_type="text/html"))
        await page.goto("http://localhost:8/")
        offer = await page.evaluate(PUBLISH)
        session = await engine.publish("chromium-up", offer)
        up = next(u for u in session.uptracks if u.kind == "video")
        # Chromium's RTX SSRC, from its a=ssrc-group:FID
        assert up.rtx_payload_type is not None and list(session._rtx_by_ssrc.values()) == [up.layers[0]]
        await page.evaluate(
            "sdp => window.pc.setRemoteDescription({type: 'answer', sdp})", session.answer_sdp
        )
        await wait_for(lambda: up.packets > 50, 10)
        rtx_ssrc = next(iter(session._rtx_by_ssrc))

        repaired: set[int] = set()
        layer = up.layers[0]
        on_repair = layer.on_repair

        def record_repair(data: bytes) -> bool:
            new = on_repair(data)
            if new:
                repaired.add((data[2] << 8) | data[3])
            return new

        layer.on_repair = record_repair  # type: ignore[method-assign]
        rng = random.Random(5)
        dropped: set[int] = set()
        seen: set[int] = set()
        rtx_arrived = 0
        dropping = True

        def drop(ssrc: int, seq: int) -> bool:
            nonlocal rtx_arrived
            if ssrc == rtx_ssrc:
                rtx_arrived += 1
            elif ssrc == up.in_ssrc and dropping and seq not in seen:
                seen.add(seq)
                if rng.random() < LOSS:
                    dropped.add(seq)
                    return True
            return False

        drop_rtp(session.ice, drop)
        await asyncio.sleep(10)
        dropping = False
        await wait_for(lambda: dropped <= repaired, 3)
        stats = await page.evaluate(SENT_STATS)
        print(f"chromium publisher: dropped {len(dropped)} of {len(seen)}, RTX packets "
              f"{rtx_arrived}, repaired {len(repaired)}, Chromium {stats}")
        assert len(dropped) > 10
        assert rtx_arrived >= len(dropped)
        assert stats["retransmittedPacketsSent"] >= len(dropped)
        await page.close()
