"""Fixtures of the turn/ tests: a coturn on loopback, our STUN server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.turn.turn_testing import coturn, has_ipv6_loopback  # noqa: F401  (fixture)
from turn import StunServer

HAS_IPV6_LOOPBACK = has_ipv6_loopback()


@pytest.fixture
async def stun_server() -> AsyncIterator[StunServer]:
    """Our STUN server on 127.0.0.1 (and ::1 when the machine has it), one port."""
    hosts = ["127.0.0.1", "::1"] if HAS_IPV6_LOOPBACK else ["127.0.0.1"]
    server = StunServer(rate_limit=50)
    await server.start(hosts, 0)
    try:
        yield server
    finally:
        await server.close()
