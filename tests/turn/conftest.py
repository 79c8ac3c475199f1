"""Fixtures of the turn/ tests: a coturn on loopback, our STUN server on loopback.

``coturn`` is reusable by any test under tests/turn/: it yields a started
:class:`coturn_process.CoturnProcess` (``.host``, ``.port``, ``.secret``,
``.realm``, ``.url``), killed at the end of the module.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from coturn_process import CoturnProcess

from turn import StunServer


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6_LOOPBACK = _has_ipv6_loopback()


@pytest.fixture(scope="module")
def coturn() -> Iterator[CoturnProcess]:
    with CoturnProcess() as server:
        yield server


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
