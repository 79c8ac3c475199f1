"""Offers shaped like other clients', and the hypothesis fuzz: no offer may
raise anything but the engine's documented errors."""

from __future__ import annotations

import asyncio
import os
import re

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from sfu import (
    AtCapacity,
    MediaEngine,
    NothingAcceptable,
    PublisherExists,
    RoomNotLive,
    SdpError,
)

from .conftest import LOOPBACK_SETTINGS
from .sfu_offers import CHROME_PUBLISH, FFMPEG_WHIP
from .sfu_peers import client_pc

ALLOWED = (SdpError, NothingAcceptable, PublisherExists, RoomNotLive, AtCapacity)


def _section(answer: str, mid: str) -> str:
    parts = re.split(r"(?=\r\nm=)", answer)
    return next(p for p in parts if f"a=mid:{mid}\r\n" in p)


async def test_chrome_shaped_offer(engine):
    session = await engine.publish("c", CHROME_PUBLISH)
    answer = session.answer_sdp
    audio, video = _section(answer, "0"), _section(answer, "1")
    assert "a=recvonly" in audio and "a=rtpmap:111 opus/48000/2" in audio
    assert "a=fmtp:111 minptime=10;useinbandfec=1" in audio
    assert "m=video 9" not in video and "a=rtpmap:96 VP8/90000" in video
    assert "a=rtcp-fb:96 nack pli" in video and "transport-cc" not in video
    # RTX for the chosen codec only, and the publisher's RTX SSRC learned from its FID group
    assert "a=rtpmap:97 rtx/90000" in video and "a=fmtp:97 apt=96" in video
    assert "rtx" not in video.replace("a=rtpmap:97 rtx/90000", "")
    assert session._rtx_by_ssrc == {2002: session.uptracks[1].layers[0]}
    # the extensions we read (mid, abs-send-time), under the offer's ids; not the others
    assert "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid" in video
    assert "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time" in video
    assert "toffset" not in answer and "ssrc-audio-level" not in answer
    assert "a=simulcast" not in answer
    assert "a=setup:active" in answer
    assert "a=group:BUNDLE 0 1" in answer
    assert re.search(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 \d+ typ host", answer)
    assert [u.in_ssrc for u in session.uptracks] == [1001, 2001]


async def test_ffmpeg_shaped_offer(engine):
    session = await engine.publish("f", FFMPEG_WHIP)
    answer = session.answer_sdp
    assert "profile-level-id=42001e" in _section(answer, "1")
    assert "a=setup:active" in answer  # FFmpeg offers passive
    # a viewer gets FFmpeg's H.264 exactly, under the viewer's own payload type
    pc = client_pc()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sub = await engine.subscribe("f", pc.localDescription.sdp)
    await pc.close()
    video = _section(sub.answer_sdp, "1")
    assert "a=sendonly" in video
    assert re.search(
        r"a=fmtp:\d+ level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001e", video
    )


# --- fuzz -------------------------------------------------------------------------------

TRICKY_LINES = [
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:96 VP8",
    "a=fmtp:999 x=1",
    "a=fmtp:96",
    "a=ssrc:abc cname:x",
    "a=ssrc:1",
    "a=ssrc-group:FID 1",
    "m=video 9 UDP/TLS/RTP/SAVPF 300",
    "m=video 9 UDP/TLS/RTP/SAVPF",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=setup:bogus",
    "a=candidate:1 1 udp 1 1.2.3.4 99999 typ host",
    "a=candidate:1 1 udp 1 example.org 9 typ host",
    "a=candidate:x",
    "a=end-of-candidates",
    "a=group:BUNDLE",
    "a=group:BUNDLE 7",
    "a=extmap:x y",
    "a=rtcp-fb:* nack",
    "a=ice-ufrag:",
    "a=ice-pwd:short",
    "a=ice-lite",
    "c=IN IP4 bad",
    "c=IN IP7 1.2.3.4",
    "a=fingerprint:sha-1 00:11",
    "a=fingerprint:sha-256 zz",
    "a=mid:0",
    "a=recvonly",
    "a=inactive",
    "a=rtcp-mux",
    "a=max-message-size:abc",
    "a=sctp-port:x",
    "a=rtcp:abc",
    "\x00",
    "v=9",
]

OPS = st.tuples(
    st.sampled_from(["drop", "dup", "replace", "insert", "digits", "truncate", "swap"]),
    st.integers(min_value=0, max_value=10_000),
    st.one_of(st.sampled_from(TRICKY_LINES), st.text(max_size=30)),
    st.integers(min_value=-(2**40), max_value=2**40),
)


def mutate(base: str, ops) -> str:
    lines = base.split("\r\n")
    for op, pos, text, number in ops:
        if not lines:
            break
        i = pos % len(lines)
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "replace":
            lines[i] = text
        elif op == "insert":
            lines.insert(i, text)
        elif op == "digits":
            lines[i] = re.sub(r"\d+", str(number), lines[i], count=1)
        elif op == "truncate":
            lines[i] = lines[i][: pos % (len(lines[i]) + 1)]
        elif op == "swap":
            j = (pos // 7) % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
    return "\r\n".join(lines)


class FuzzRig:
    """An engine on its own loop, with a live room to subscribe to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = MediaEngine(LOOPBACK_SETTINGS, connect_timeout=2)
        self.offers: dict[str, str] = {"chrome": CHROME_PUBLISH, "ffmpeg": FFMPEG_WHIP}
        self.loop.run_until_complete(self._setup())
        self.n = 0
        self.outcomes: dict[str, int] = {}

    async def _setup(self) -> None:
        await self.engine.publish("live", CHROME_PUBLISH)
        for name, kinds, direction in [
            ("aiortc_pub", ("audio", "video"), "sendonly"),
            ("aiortc_sub", ("audio", "video"), "recvonly"),
        ]:
            pc = client_pc()
            for k in kinds:
                pc.addTransceiver(k, direction=direction)
            await pc.setLocalDescription(await pc.createOffer())
            self.offers[name] = pc.localDescription.sdp
            await pc.close()

    def run(self, sdp: str) -> None:
        self.loop.run_until_complete(self._run(sdp))

    async def _run(self, sdp: str) -> None:
        self.n += 1
        for call in (
            lambda: self.engine.publish(f"fuzz{self.n}", sdp),
            lambda: self.engine.publish("live", sdp),
            lambda: self.engine.subscribe("live", sdp),
            lambda: self.engine.subscribe("nowhere", sdp),
        ):
            try:
                session = await call()
            except ALLOWED as exc:
                self.outcomes[type(exc).__name__] = self.outcomes.get(type(exc).__name__, 0) + 1
                continue
            self.outcomes["ok"] = self.outcomes.get("ok", 0) + 1
            assert session.answer_sdp.startswith("v=0\r\n")
            await session.close("fuzz")

    def close(self) -> None:
        print("fuzz outcomes", self.outcomes)
        self.loop.run_until_complete(self.engine.close())
        assert self.engine.session_count == 0
        self.loop.close()


@pytest.fixture
def fuzz(loopback_only):
    rig = FuzzRig()
    yield rig
    rig.close()


FUZZ = hsettings(
    max_examples=int(os.environ.get("SFU_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    name=st.sampled_from(["chrome", "ffmpeg", "aiortc_pub", "aiortc_sub"]),
    ops=st.lists(OPS, min_size=1, max_size=6),
)
def test_mutated_offers_raise_only_documented_errors(fuzz, name, ops):
    fuzz.run(mutate(fuzz.offers[name], ops))


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=400), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    )
)
def test_random_text_raises_only_documented_errors(fuzz, text):
    fuzz.run(text)
