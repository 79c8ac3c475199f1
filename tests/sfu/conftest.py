"""Fixtures for sfu/ tests: loopback only, an engine, media, client peers."""

from __future__ import annotations

import asyncio
import ipaddress

import aioice.ice
import pytest

from config.settings import Settings
from sfu import MediaEngine

from .sfu_media import encoded_h264, encoded_opus, encoded_vp8

LOOPBACK_SETTINGS = Settings(ice_addresses=("127.0.0.1",))


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Client peers gather 127.0.0.1 (aioice never does by itself), use no STUN
    server, and nothing aioice sends may leave the loopback interface."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    blocked: list[tuple[str, int]] = []

    def allowed(addr) -> bool:
        try:
            return ipaddress.ip_address(addr[0]).is_loopback
        except ValueError:
            return False

    send_stun = aioice.ice.StunProtocol.send_stun
    send_data = aioice.ice.StunProtocol.send_data

    def guarded_send_stun(self, message, addr):
        if not allowed(addr):
            blocked.append(addr)
            return
        send_stun(self, message, addr)

    async def guarded_send_data(self, data, addr):
        if not allowed(addr):
            blocked.append(addr)
            return
        await send_data(self, data, addr)

    monkeypatch.setattr(aioice.ice.StunProtocol, "send_stun", guarded_send_stun)
    monkeypatch.setattr(aioice.ice.StunProtocol, "send_data", guarded_send_data)
    yield blocked


@pytest.fixture
def settings() -> Settings:
    return LOOPBACK_SETTINGS


@pytest.fixture
async def engine(settings):
    eng = MediaEngine(settings, connect_timeout=10.0)
    yield eng
    await asyncio.wait_for(eng.close(), 10)
    assert eng.session_count == 0


@pytest.fixture(scope="session")
def vp8_frames():
    return encoded_vp8(90)


@pytest.fixture(scope="session")
def h264_frames():
    return encoded_h264(60)


@pytest.fixture(scope="session")
def opus_frames():
    return encoded_opus(100)
