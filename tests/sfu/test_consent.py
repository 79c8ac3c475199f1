"""ICE consent (RFC 7675): a publisher that never answers our checks but keeps
sending (FFmpeg's WHIP client) must survive; a silent one must not.

aioice's constants are shrunk so that the 30 s window takes about 0.3 s.
"""

from __future__ import annotations

import asyncio

import aioice.ice
import aioice.stun
import pytest

from .sfu_peers import PacketTrack, Publisher, wait_for


@pytest.fixture
def fast_consent(monkeypatch):
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.05)  # an unanswered check fails in 50 ms


async def _publisher(engine, frames):
    pub = Publisher([PacketTrack("video", frames)])
    session = await engine.publish("c", await pub.offer())
    await pub.accept(session.answer_sdp)
    await wait_for(lambda: session.state == "connected", 5)
    client_ice = pub.senders[0].transport.transport
    return pub, session, client_ice


async def test_publisher_that_ignores_consent_checks_survives(engine, vp8_frames, fast_consent):
    pub, session, client_ice = await _publisher(engine, vp8_frames)
    ignored = []
    client_ice._connection.request_received = lambda *args: ignored.append(args)
    before = session.uptracks[0].packets
    await asyncio.sleep(2.0)  # more than six consent windows
    # our checks went unanswered all along: twice what expires consent in stock aioice
    assert len(ignored) >= 2 * aioice.ice.CONSENT_FAILURES
    assert session.state == "connected"
    assert session.uptracks[0].packets > before + 30
    await pub.close()


async def test_silent_publisher_loses_consent(engine, vp8_frames, fast_consent):
    pub, session, client_ice = await _publisher(engine, vp8_frames)
    connection = client_ice._connection
    connection.request_received = lambda *args: None  # no answers

    async def black_hole(data: bytes) -> None:
        return None

    client_ice._send = black_hole  # no media, no DTLS
    if connection._query_consent_task is not None:  # and no checks of its own
        connection._query_consent_task.cancel()
    await asyncio.wait_for(session.wait_closed(), 3)
    assert session.close_reason in ("ice_failed", "disconnected")
    await pub.close()
