"""WHIP and WHEP over real HTTP with real aiortc peers, and every error they promise."""

from __future__ import annotations

import asyncio
import hashlib
import re

import aiohttp
import pytest

from api.components import AIRWAVE
from tests.conftest import RunningApp, free_port, start_app
from tests.sfu.sfu_media import encoded_opus, encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, Viewer, vp8_keyframe, wait_for

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

SDP = {"Content-Type": "application/sdp"}


@pytest.fixture(scope="module")
def vp8() -> list:
    return encoded_vp8(60)


@pytest.fixture(scope="module")
def opus() -> list:
    return encoded_opus(50)


def auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def whip(http: aiohttp.ClientSession, app: RunningApp, room: str, publisher: Publisher, token: str):
    async with http.post(f"{app.url}/whip/{room}", data=await publisher.offer(), headers=auth(token, **SDP)) as r:
        body = await r.text()
        assert r.status == 201, body
        await publisher.accept(body)
        return r.headers.copy()


async def whep(http: aiohttp.ClientSession, app: RunningApp, room: str, viewer: Viewer, token: str):
    async with http.post(f"{app.url}/whep/{room}", data=await viewer.offer(), headers=auth(token, **SDP)) as r:
        body = await r.text()
        assert r.status == 201, body
        await viewer.accept(body)
        return r.headers.copy()


async def test_publish_and_watch_forwards_identical_frames(running: RunningApp, vp8, opus) -> None:
    publisher = Publisher([PacketTrack("video", vp8), PacketTrack("audio", opus)])
    viewers = [Viewer(("video", "audio")) for _ in range(2)]
    async with aiohttp.ClientSession() as http:
        bob = running.token("bob", room="r1", publish=True)
        headers = await whip(http, running, "r1", publisher, bob)
        assert re.fullmatch(r"/whip/r1/[a-f0-9]{32}", headers["Location"])
        assert re.fullmatch(r'"[0-9a-f]{32}"', headers["ETag"])
        assert headers["Content-Type"] == "application/sdp"
        engine = running.app[AIRWAVE].media
        await wait_for(lambda: engine.rooms().get("r1") is not None and engine.rooms()["r1"].live, 10)
        for v in viewers:
            await whep(http, running, "r1", v, running.token("ann", room="r1", subscribe=True))
        await wait_for(lambda: all(len(v.frames["video"]) >= 15 and v.frames["audio"] for v in viewers), 15)

        sent = {hashlib.sha256(f.data).hexdigest() for f in vp8}
        for v in viewers:
            got = [data for _, data in v.frames["video"]]
            assert vp8_keyframe(got[0]), "a viewer's first video frame is a keyframe"
            assert {hashlib.sha256(d).hexdigest() for d in got} <= sent
        assert engine.subscriber_count("r1") == 2

        # The publisher's DELETE ends it, and every viewer with it.
        async with http.delete(running.url + headers["Location"], headers=auth(bob)) as r:
            assert r.status == 200
        await wait_for(lambda: all(v.closed_by_server.is_set() for v in viewers), 20)
        await wait_for(lambda: engine.session_count == 0, 10)
        async with http.delete(running.url + headers["Location"], headers=auth(bob)) as r:
            assert r.status == 404 and (await r.json())["code"] == "session_not_found"
    await publisher.close()
    for v in viewers:
        await v.close()


async def test_trickle_patch_restart_and_if_match(running: RunningApp, vp8) -> None:
    publisher = Publisher([PacketTrack("video", vp8)])
    async with aiohttp.ClientSession() as http:
        headers = await whip(http, running, "r2", publisher, running.token("bob", room="r2", publish=True))
        url = running.url + headers["Location"]
        etag = headers["ETag"]
        offer = publisher.pc.localDescription.sdp
        ufrag = re.search(r"a=ice-ufrag:(\S+)", offer).group(1)
        pwd = re.search(r"a=ice-pwd:(\S+)", offer).group(1)
        port = free_port()
        frag = (
            f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
            f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host\r\na=end-of-candidates\r\n"
        )
        bob = auth(running.token("bob", room="r2", publish=True))  # the POST used a token: so must PATCH
        patch_headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag, **bob}
        async with http.patch(url, data=frag, headers=patch_headers) as r:
            assert r.status == 204, await r.text()
        async with http.patch(url, data=frag, headers={**patch_headers, "If-Match": '"stale"'}) as r:
            assert r.status == 412
        async with http.patch(url, data=frag, headers={"Content-Type": "application/sdp", **bob}) as r:
            assert r.status == 415
        restart = frag.replace(ufrag, "newufrag1234")
        async with http.patch(url, data=restart, headers={"Content-Type": "application/trickle-ice-sdpfrag", **bob}) as r:
            assert r.status == 428  # ICE restarts: tests/api/test_ice_restart.py
        # The session kept running through all of that.
        engine = running.app[AIRWAVE].media
        await wait_for(lambda: engine.rooms().get("r2") is not None and engine.rooms()["r2"].live, 10)
        async with http.patch(url, data="a=candidate:garbage\r\n", headers=patch_headers) as r:
            assert r.status == 400
        async with http.delete(url, headers=auth(running.token("eve", room="r2", publish=True))) as r:
            assert r.status == 403
        async with http.delete(url, headers=auth(running.token("bob", room="r2", publish=True))) as r:
            assert r.status == 200
    await publisher.close()


async def test_bad_requests_get_clear_errors_and_change_nothing(running: RunningApp, vp8) -> None:
    good = running.token("bob", room="r3", publish=True, subscribe=True)
    publisher = Publisher([PacketTrack("video", vp8)])
    offer = await publisher.offer()
    engine = running.app[AIRWAVE].media
    async with aiohttp.ClientSession() as http:
        async def post(path: str, data: object, headers: dict) -> tuple[int, dict, dict]:
            async with http.post(running.url + path, data=data, headers=headers) as r:
                return r.status, await r.json(), dict(r.headers)

        status, body, _ = await post("/whip/r3", offer, SDP)
        assert (status, body["code"]) == (401, "missing_token")
        status, body, _ = await post("/whip/r3", offer, auth("nope", **SDP))
        assert (status, body["code"]) == (401, "invalid_token")
        status, body, _ = await post("/whip/r3", offer, auth(running.token("bob", room="other", publish=True), **SDP))
        assert (status, body["code"]) == (403, "forbidden")
        status, body, hdrs = await post("/whip/r3", offer, auth(good, **{"Content-Type": "text/plain"}))
        assert (status, body["code"]) == (415, "unsupported_media_type") and hdrs["Accept-Post"] == "application/sdp"
        status, body, _ = await post("/whip/r3", "v=0\r\nthis is not sdp", auth(good, **SDP))
        assert status == 400 and body["requestId"]
        status, body, _ = await post("/whip/r3", "v=0\r\n" + "a=x\r\n" * 20000, auth(good, **SDP))
        assert (status, body["code"]) == (413, "payload_too_large")
        no_media = re.sub(r"a=rtpmap:\d+ VP8/90000", "a=rtpmap:96 AV1/90000", offer)
        no_media = no_media.replace("VP8", "AV1").replace("H264", "XXXX")
        status, body, _ = await post("/whip/r3", no_media, auth(good, **SDP))
        assert status == 422, body
        status, body, _ = await post("/whep/r3", (await Viewer().offer()), auth(good, **SDP))
        assert (status, body["code"]) == (404, "room_not_live")
        async with http.patch(running.url + "/whip/r3/" + "0" * 32, data="", headers={"Content-Type": "application/trickle-ice-sdpfrag"}) as r:
            assert r.status == 404
        assert engine.session_count == 0

        # A second publisher in a room is a conflict.
        await whip(http, running, "r3", publisher, good)
        second = Publisher([PacketTrack("video", vp8)])
        status, body, _ = await post("/whip/r3", await second.offer(), auth(good, **SDP))
        assert (status, body["code"]) == (409, "room_has_publisher")
        assert engine.session_count == 1
    await second.close()
    await publisher.close()


async def _raw_post(app: RunningApp, path: str, head: dict[str, str], parts: list[bytes]) -> tuple[int, str]:
    """A POST written in ``parts``, 0.3 s apart (a segment that came a round trip later)."""
    host, port = app.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Connection: close",
                 *(f"{k}: {v}" for k, v in head.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        for n, part in enumerate(parts):
            if n:
                await writer.drain()
                await asyncio.sleep(0.3)
            writer.write(part)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode()


async def test_an_offer_that_arrives_in_pieces_is_read_whole(running: RunningApp, vp8, opus) -> None:
    publisher = Publisher([PacketTrack("video", vp8), PacketTrack("audio", opus)])
    offer = (await publisher.offer()).encode()
    head = {**auth(running.token("bob", room="r9", publish=True), **SDP), "Content-Length": str(len(offer))}
    cut = offer.index(b"m=", offer.index(b"m=") + 1)  # the second media section comes later
    status, answer = await _raw_post(running, "/whip/r9", head, [offer[:cut], offer[cut:]])
    assert status == 201, answer
    assert answer.count("\r\nm=") == offer.count(b"\r\nm=") == 2
    await publisher.accept(answer)
    await publisher.close()

    # chunked, with no Content-Length: the size limit counts every chunk, not the first
    big = b"v=0\r\n" + b"a=x\r\n" * 20000  # 100 kB
    chunks = [b"%x\r\n%s\r\n" % (len(big[i:i + 30000]), big[i:i + 30000]) for i in range(0, len(big), 30000)]
    head = {**auth(running.token("bob", room="r9b", publish=True), **SDP), "Transfer-Encoding": "chunked"}
    status, body = await _raw_post(running, "/whip/r9b", head, [*chunks, b"0\r\n\r\n"])
    assert status == 413 and '"payload_too_large"' in body, body


async def test_viewer_limit_answers_503_with_retry_after(make_settings, vp8) -> None:
    app = await start_app(make_settings(max_subscribers_per_room=1))
    publisher = Publisher([PacketTrack("video", vp8)])
    first, second = Viewer(), Viewer()
    try:
        async with aiohttp.ClientSession() as http:
            await whip(http, app, "r4", publisher, app.token("bob", room="r4", publish=True))
            await whep(http, app, "r4", first, app.token("v1", room="r4", subscribe=True))
            async with http.post(f"{app.url}/whep/r4", data=await second.offer(),
                                 headers=auth(app.token("v2", room="r4", subscribe=True), **SDP)) as r:
                assert r.status == 503
                assert int(r.headers["Retry-After"]) > 0
                assert (await r.json())["code"] == "at_capacity"
    finally:
        for peer in (publisher, first, second):
            await peer.close()
        await app.server.close()


async def test_cors_preflight_and_link_headers(make_settings, vp8) -> None:
    stun_port = free_port(__import__("socket").SOCK_DGRAM)
    app = await start_app(make_settings(stun_port=stun_port, cors_origins="https://app.example"))
    publisher = Publisher([PacketTrack("video", vp8)])
    try:
        async with aiohttp.ClientSession() as http:
            async with http.options(f"{app.url}/whip/r5", headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert "POST" in r.headers["Access-Control-Allow-Methods"]
                assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
                assert r.headers["Accept-Post"] == "application/sdp"
            headers = await whip(http, app, "r5", publisher, app.token("bob", room="r5", publish=True))
            async with http.post(f"{app.url}/whip/r5", data="x", headers={"Origin": "https://evil.example", **SDP}) as r:
                assert "Access-Control-Allow-Origin" not in r.headers
        links = headers.getall("Link")
        assert f'<stun:127.0.0.1:{stun_port}>; rel="ice-server"' in links
        exposed = headers["Access-Control-Expose-Headers"] if "Access-Control-Expose-Headers" in headers else ""
        assert exposed == "" or {"Location", "ETag", "Link"} <= {h.strip() for h in exposed.split(",")}
    finally:
        await publisher.close()
        await app.server.close()


async def test_ice_servers_route_gives_turn_credentials(make_settings) -> None:
    app = await start_app(make_settings(turn_urls="turn:127.0.0.1:3479", turn_secrets="s1,s0", turn_ttl=600))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{app.url}/api/v1/ice-servers") as r:
                assert r.status == 401
            async with http.get(f"{app.url}/api/v1/ice-servers", headers=auth(app.token("ann"))) as r:
                body = await r.json()
    finally:
        await app.server.close()
    assert body["ttl"] == 600
    turn = body["iceServers"][-1]
    assert turn["urls"] == ["turn:127.0.0.1:3479"] and turn["username"].endswith(":ann")


async def test_publisher_that_vanishes_is_cleaned_up(running: RunningApp, vp8) -> None:
    """No DELETE: the client just closes; the server notices and ends the session."""
    publisher = Publisher([PacketTrack("video", vp8)])
    async with aiohttp.ClientSession() as http:
        await whip(http, running, "r6", publisher, running.token("bob", room="r6", publish=True))
    engine = running.app[AIRWAVE].media
    await wait_for(lambda: engine.rooms().get("r6") is not None and engine.rooms()["r6"].live, 10)
    await publisher.close()
    await wait_for(lambda: engine.session_count == 0, 45)
    await asyncio.sleep(0)
