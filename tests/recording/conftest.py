"""Fixtures for recording/ tests: an engine (loopback ICE) and pre-encoded media."""

from __future__ import annotations

import asyncio

import pytest

from config.settings import Settings
from sfu import MediaEngine
from tests.sfu.sfu_media import encoded_h264, encoded_opus, encoded_vp8


@pytest.fixture
async def engine():
    eng = MediaEngine(Settings(ice_addresses=("127.0.0.1",)), connect_timeout=10.0)
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
