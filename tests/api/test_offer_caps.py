"""An offer of many media sections gets no answer of as many: refused (issue 15.9)."""

from __future__ import annotations

import aiohttp

from api.components import AIRWAVE
from sfu.sdp import MAX_MEDIA_SECTIONS
from tests.conftest import RunningApp
from tests.sfu.sfu_media import encoded_vp8
from tests.sfu.sfu_peers import PacketTrack, Publisher


def _many_sections(offer: str, count: int) -> str:
    head, _, first = offer.partition("\r\nm=")
    section = "m=" + first
    copies = [section.replace("a=mid:0", f"a=mid:{i}") for i in range(count)]
    head = head.replace("a=group:BUNDLE 0", "a=group:BUNDLE " + " ".join(str(i) for i in range(count)))
    return head + "\r\n" + "".join(copies)


async def test_an_offer_with_too_many_media_sections_is_refused(running: RunningApp) -> None:
    publisher = Publisher([PacketTrack("video", encoded_vp8(5))])
    offer = await publisher.offer()
    headers = {"Authorization": f"Bearer {running.token('ann', room='m1', publish=True)}",
               "Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        flood = _many_sections(offer, MAX_MEDIA_SECTIONS + 1)
        assert flood.count("\r\nm=") == MAX_MEDIA_SECTIONS + 1 and len(flood) < 64 * 1024
        async with http.post(f"{running.url}/whip/m1", data=flood, headers=headers) as r:
            body = await r.json()
            assert (r.status, body["code"]) == (400, "bad_sdp"), body
            assert "media sections" in body["message"]
        assert running.app[AIRWAVE].media.sessions() == []
        # as many as allowed is still an offer like any other
        async with http.post(f"{running.url}/whip/m1", data=_many_sections(offer, 2), headers=headers) as r:
            assert r.status == 201, await r.text()
    await publisher.close()
