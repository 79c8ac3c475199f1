"""Simulcast offers as Chromium and OBS write them: which layers, in which
order, with which SSRCs, and what we answer."""

from __future__ import annotations

import re

from sfu.sdp import order_layers, parse_offer
from sfu.session import header_extension

from .sfu_offers import CHROME_PUBLISH, FINGERPRINT

# Chromium with sendEncodings [q, h, f] (unified plan: no a=ssrc for the layers),
# the lowest one paused by the app
CHROME_SIMULCAST = CHROME_PUBLISH.replace(
    "a=ssrc-group:FID 2001 2002\r\n"
    "a=ssrc:2001 cname:abc\r\n"
    "a=ssrc:2001 msid:stream video-track\r\n"
    "a=ssrc:2002 cname:abc\r\n"
    "a=ssrc:2002 msid:stream video-track\r\n",
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n"
    "a=rid:q send\r\n"
    "a=rid:h send\r\n"
    "a=rid:f send\r\n"
    "a=simulcast:send ~q;h;f\r\n",
)

# OBS 32 (libdatachannel): rids 0 (the full-size encoder), 1, 2, mid and rid
# extensions on ids 1 and 2, H.264 only, one a=ssrc for the first layer
OBS_WHIP = "\r\n".join(
    [
        "v=0",
        "o=rtc 1234567890 0 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=group:LS 0 1",
        "a=msid-semantic:WMS *",
        "a=ice-options:ice2,trickle",
        f"a=fingerprint:sha-256 {FINGERPRINT}",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=sendonly",
        "a=ssrc:4000 cname:obscname",
        "a=ssrc:4000 msid:obsstream obsstream-audio",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1",
        "a=setup:actpass",
        "a=ice-ufrag:Zx9q",
        "a=ice-pwd:a1b2c3d4e5f6a7b8c9d0e1f2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sendonly",
        "a=ssrc:4001 cname:obscname",
        "a=ssrc:4001 msid:obsstream obsstream-video",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=rid:0 send",
        "a=rid:1 send",
        "a=rid:2 send",
        "a=simulcast:send 0;1;2",
        "a=rtcp-mux",
        "a=rtpmap:96 H264/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtcp-fb:96 goog-remb",
        "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1",
        "a=setup:actpass",
        "a=ice-ufrag:Zx9q",
        "a=ice-pwd:a1b2c3d4e5f6a7b8c9d0e1f2",
        "",
    ]
)

SIM_GROUP = CHROME_PUBLISH.replace(
    "a=ssrc-group:FID 2001 2002\r\n",
    "a=ssrc-group:SIM 2001 2003 2005\r\na=ssrc-group:FID 2001 2002\r\n",
)


def _video(answer: str) -> str:
    return answer[answer.index("m=video") :]


def test_rid_lines_are_parsed_in_simulcast_order():
    video = parse_offer(CHROME_SIMULCAST).media[1]
    assert video.rids == ["q", "h", "f"] and video.paused_rids == ["q"]
    assert video.extensions["urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"] == 10
    assert parse_offer(SIM_GROUP).media[1].sim_ssrcs == [2001, 2003, 2005]
    # one rid, a recv rid, a malformed one: not simulcast
    one = CHROME_SIMULCAST.replace("a=rid:h send\r\na=rid:f send\r\n", "").replace("~q;h;f", "q")
    assert parse_offer(one).media[1].rids == []
    odd = CHROME_SIMULCAST.replace("a=rid:h send", "a=rid:h/x send")
    assert parse_offer(odd).media[1].rids == ["q", "f"]


def test_layer_order_from_names():
    assert order_layers(["f", "h", "q"]) == (["q", "h", "f"], True)
    assert order_layers(["h", "l", "m"]) == (["l", "m", "h"], True)
    assert order_layers(["0", "1", "2"]) == (["2", "1", "0"], True)  # OBS: 0 is full size
    assert order_layers(["a", "b"]) == (["a", "b"], False)  # measured later


async def test_chrome_simulcast_offer(engine):
    session = await engine.publish("cs", CHROME_SIMULCAST)
    video = _video(session.answer_sdp)
    assert "a=simulcast:recv q;h;f" in video
    assert all(f"a=rid:{r} recv" in video for r in "qhf")
    for ext in (
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    ):
        assert ext in video
    assert "toffset" not in video and "transport-cc" not in video
    assert "a=rtcp-fb:96 goog-remb" in video
    up = session.uptracks[1]
    assert [layer.rid for layer in up.layers] == ["q", "h", "f"]
    assert all(layer.ssrc is None for layer in up.layers)  # learned from the rid extension


async def test_obs_simulcast_offer(engine):
    session = await engine.publish("obs", OBS_WHIP)
    video = _video(session.answer_sdp)
    assert "a=simulcast:recv 0;1;2" in video
    assert re.search(r"a=rtpmap:96 H264/90000", video)
    up = session.uptracks[1]
    assert [layer.rid for layer in up.layers] == ["2", "1", "0"]


async def test_sim_group_offer_takes_its_ssrcs_low_to_high(engine):
    session = await engine.publish("sim", SIM_GROUP)
    up = session.uptracks[1]
    assert [layer.ssrc for layer in up.layers] == [2001, 2003, 2005]
    assert "a=simulcast" not in session.answer_sdp


def test_header_extension_reader():
    head = bytes([0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 5])
    one_byte = head + bytes([0xBE, 0xDE, 0, 2, 0xA0, ord("q"), 0x22, 1, 2, 3, 0, 0])
    assert header_extension(one_byte, 10) == b"q"
    assert header_extension(one_byte, 2) == bytes([1, 2, 3])
    assert header_extension(one_byte, 3) is None
    two_byte = head + bytes([0x10, 0x00, 0, 1, 10, 1, ord("h"), 0])
    assert header_extension(two_byte, 10) == b"h"
    assert header_extension(one_byte[:18], 2) is None  # truncated
    assert header_extension(head + bytes(8), 10) is None
