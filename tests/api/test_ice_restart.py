"""WHEP/WHIP ICE restart (RFC 9725 section 4.4.1) over real HTTP with real
aiortc peers: the viewer moves to another address, PATCHes new credentials,
and media resumes on the new path under the same DTLS association."""

from __future__ import annotations

import re

import aiohttp
import pytest
from aiortc import sdp as aiortc_sdp
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceParameters

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher, Viewer, vp8_keyframe, wait_for
from tests.sfu.sfu_restart import ClientRestart, dtls_of, nominated_pair

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

SDP = {"Content-Type": "application/sdp"}
SDPFRAG = "application/trickle-ice-sdpfrag"


@pytest.fixture(scope="module")
def vp8() -> list:
    return encoded_vp8(60)


@pytest.fixture
def handshakes(monkeypatch) -> list[RTCDtlsTransport]:
    done: list[RTCDtlsTransport] = []
    setup = RTCDtlsTransport._setup_srtp

    def counted(self: RTCDtlsTransport) -> None:
        done.append(self)
        setup(self)

    monkeypatch.setattr(RTCDtlsTransport, "_setup_srtp", counted)
    return done


def auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def server_fragment(body: str) -> tuple[RTCIceParameters, list]:
    ufrag = re.search(r"^a=ice-ufrag:(\S+)", body, re.M).group(1)
    pwd = re.search(r"^a=ice-pwd:(\S+)", body, re.M).group(1)
    candidates = [
        aiortc_sdp.candidate_from_sdp(line[len("a=candidate:"):])
        for line in body.splitlines()
        if line.startswith("a=candidate:")
    ]
    return RTCIceParameters(usernameFragment=ufrag, password=pwd), candidates


async def _watching(http, running: RunningApp, room: str, vp8):
    publisher = Publisher([PacketTrack("video", vp8)])
    token = running.token("bob", room=room, publish=True)
    async with http.post(f"{running.url}/whip/{room}", data=await publisher.offer(),
                         headers=auth(token, **SDP)) as r:
        assert r.status == 201, await r.text()
        await publisher.accept(await r.text())
    viewer = Viewer(("video",))
    token = running.token("ann", room=room, subscribe=True)
    async with http.post(f"{running.url}/whep/{room}", data=await viewer.offer(),
                         headers=auth(token, **SDP)) as r:
        assert r.status == 201, await r.text()
        await viewer.accept(await r.text())
        location, etag = r.headers["Location"], r.headers["ETag"]
    await wait_for(lambda: len(viewer.frames["video"]) >= 10, 10)
    return publisher, viewer, running.url + location, etag, token


async def test_whep_viewer_restarts_ice_on_a_new_address(running: RunningApp, vp8, handshakes) -> None:
    engine = running.app[AIRWAVE].media
    async with aiohttp.ClientSession() as http:
        publisher, viewer, url, etag, token = await _watching(http, running, "move", vp8)
        try:
            (session,) = [s for s in engine._sessions.values() if s.role == "subscriber"]
            dtls, srtp = session.dtls, session.dtls._tx_srtp
            assert len(handshakes) == 4
            client = ClientRestart(viewer.pc, "127.0.0.2")
            await client.gather()
            headers = auth(token, **{"Content-Type": SDPFRAG, "If-Match": "*"})
            async with http.patch(url, data=client.sdpfrag(), headers=headers) as r:
                body = await r.text()
                assert r.status == 200, body
                assert r.headers["Content-Type"] == SDPFRAG
                new_etag = r.headers["ETag"]
            assert new_etag != etag and re.fullmatch(r'"[0-9a-f]{32}"', new_etag)
            assert "a=end-of-candidates" in body and "a=mid:0" in body
            remote, candidates = server_fragment(body)
            assert remote.usernameFragment != session.answer_sdp.split("a=ice-ufrag:")[1].split()[0]
            await client.complete(remote, candidates)
            await wait_for(lambda: nominated_pair(session.ice)[1][0] == "127.0.0.2", 3)

            before = len(viewer.frames["video"])
            await wait_for(lambda: len(viewer.frames["video"]) >= before + 30, 3)
            assert any(vp8_keyframe(f) for _, f in viewer.frames["video"][before:])
            assert engine.session(session.id) is session and session.state == "connected"
            assert session.dtls is dtls and dtls._tx_srtp is srtp and len(handshakes) == 4
            assert dtls_of(viewer.pc).state == "connected"

            # A trickle PATCH of the new generation takes the new ETag; the old one is stale.
            trickle = client.sdpfrag()
            frag_headers = auth(token, **{"Content-Type": SDPFRAG, "If-Match": new_etag})
            async with http.patch(url, data=trickle, headers=frag_headers) as r:
                assert r.status == 204, await r.text()
                assert r.headers["ETag"] == new_etag
            async with http.patch(url, data=trickle, headers={**frag_headers, "If-Match": etag}) as r:
                assert r.status == 412 and (await r.json())["code"] == "precondition_failed"
        finally:
            await viewer.close()
            await publisher.close()


async def test_restart_refusals_change_nothing(running: RunningApp, vp8) -> None:
    engine = running.app[AIRWAVE].media
    async with aiohttp.ClientSession() as http:
        publisher, viewer, url, etag, token = await _watching(http, running, "stay", vp8)
        try:
            (session,) = [s for s in engine._sessions.values() if s.role == "subscriber"]
            path = nominated_pair(session.ice)
            restart = (
                "a=ice-ufrag:moved123\r\na=ice-pwd:" + "x" * 24 + "\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\n"
                "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.2 9 typ host\r\n"
            )

            async def patch(headers: dict[str, str]) -> tuple[int, dict]:
                async with http.patch(url, data=restart, headers={"Content-Type": SDPFRAG, **headers}) as r:
                    return r.status, await r.json()

            status, body = await patch(auth(token, **{"If-Match": '"stale"'}))
            assert (status, body["code"]) == (412, "precondition_failed") and body["requestId"]
            status, body = await patch({"If-Match": "*"})  # the WHEP POST carried a token
            assert (status, body["code"]) == (401, "missing_token")
            status, body = await patch(auth("not-a-token", **{"If-Match": "*"}))
            assert status == 401
            eve = running.token("eve", room="stay", subscribe=True)
            status, body = await patch(auth(eve, **{"If-Match": "*"}))
            assert (status, body["code"]) == (403, "forbidden")
            status, body = await patch(auth(token))
            assert (status, body["code"]) == (428, "precondition_required")
            async with http.patch(url, data=restart.replace("a=ice-pwd:", "a=x:"),
                                  headers=auth(token, **{"Content-Type": SDPFRAG, "If-Match": "*"})) as r:
                assert r.status == 400 and (await r.json())["code"] == "bad_sdp"
            # Unchanged: same path, same credentials, the old ETag still good, media flowing.
            assert nominated_pair(session.ice) == path and session._restart is None
            async with http.patch(url, data="a=end-of-candidates\r\n",
                                  headers=auth(token, **{"Content-Type": SDPFRAG, "If-Match": etag})) as r:
                assert r.status == 204
            before = len(viewer.frames["video"])
            await wait_for(lambda: len(viewer.frames["video"]) >= before + 10, 3)
            assert session.state == "connected"
        finally:
            await viewer.close()
            await publisher.close()
