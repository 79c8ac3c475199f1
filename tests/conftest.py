"""Fixtures every suite shares: settings, both database backends, a running app.

The embedded default (SQLite, in-process bus) and production (PostgreSQL plus
Redis) are both exercised: fixtures parametrised with ``backend`` run once per
column. PostgreSQL and Redis must be up (tests/prepare-machine.sh starts
them); a missing server fails the run, it never skips.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from auth import Grants, TokenService
from config import Settings, load_settings

PG_URL = os.environ.get("AIRWAVE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AIRWAVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKENDS = ["embedded", "postgres"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _require_services() -> None:
    try:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        await conn.close()
    except Exception as exc:  # fail, never skip: CI must have PostgreSQL
        pytest.fail(f"PostgreSQL is required at {PG_URL} (run tests/prepare-machine.sh): {exc}")
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} (run tests/prepare-machine.sh): {exc}")
    finally:
        await client.aclose()


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def base_env(tmp_path: Path) -> dict[str, str]:
    """Settings every test server shares: loopback only, no fixed ports."""
    return {
        "AIRWAVE_DATA_DIR": str(tmp_path / "data"),
        "AIRWAVE_JWT_SECRET": "test-secret-" + "x" * 32,
        "AIRWAVE_HOST": "127.0.0.1",
        "AIRWAVE_PORT": "0",
        "AIRWAVE_STUN_PORT": "0",
        "AIRWAVE_ICE_ADDRESSES": "127.0.0.1",
        "AIRWAVE_LOG_LEVEL": "warning",
    }


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every WebRTC peer in the tests (aiortc clients in this process) gathers
    127.0.0.1 only (aioice never gathers loopback by itself), and nothing aioice
    sends may leave the loopback interface: such datagrams are dropped and listed."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    blocked: list[tuple[str, int]] = []

    def allowed(addr: tuple[str, int]) -> bool:
        try:
            return ipaddress.ip_address(addr[0]).is_loopback
        except ValueError:
            return False

    send_stun = aioice.ice.StunProtocol.send_stun
    send_data = aioice.ice.StunProtocol.send_data

    def guarded_send_stun(self: Any, message: Any, addr: tuple[str, int]) -> None:
        if not allowed(addr):
            blocked.append(addr)
            return
        send_stun(self, message, addr)

    async def guarded_send_data(self: Any, data: bytes, addr: tuple[str, int]) -> None:
        if not allowed(addr):
            blocked.append(addr)
            return
        await send_data(self, data, addr)

    monkeypatch.setattr(aioice.ice.StunProtocol, "send_stun", guarded_send_stun)
    monkeypatch.setattr(aioice.ice.StunProtocol, "send_data", guarded_send_data)
    return blocked


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def make_settings(
    backend: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Settings]]:
    """Build Settings for the parametrised backend; extra AIRWAVE_* names as keyword overrides."""
    schemas: list[str] = []
    if backend == "postgres":
        await _require_services()

    def build(**env: Any) -> Settings:
        values = base_env(tmp_path)
        if backend == "postgres":
            schema = f"t_{uuid.uuid4().hex[:12]}"
            schemas.append(schema)
            values.update(
                AIRWAVE_DATABASE_URL=PG_URL,
                AIRWAVE_DATABASE_SCHEMA=schema,
                AIRWAVE_REDIS_URL=REDIS_URL,
                AIRWAVE_REDIS_PREFIX=f"test-{schema}",
            )
        values.update({f"AIRWAVE_{k.upper()}": str(v) for k, v in env.items()})
        return load_settings(values)

    yield build
    for schema in schemas:
        await drop_schema(schema)


@pytest.fixture
async def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


class RunningApp:
    """An airwave app served on a real loopback port, for HTTP and Socket.IO clients."""

    def __init__(self, server: TestServer, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.tokens = TokenService(settings)

    @property
    def app(self) -> web.Application:
        return self.server.app

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def token(self, user: str = "alice", *, name: str = "", ttl: float = 600, **grants: Any) -> str:
        return self.tokens.mint(user, name=name or user, grants=Grants(**grants), ttl=ttl)


async def rest(
    app: RunningApp, method: str, path: str, user: str | None = "alice", json: Any = None, **grants: Any
) -> tuple[int, Any]:
    """One REST call as ``user`` (None: no token); returns (status, JSON body)."""
    headers = {"Authorization": f"Bearer {app.token(user, **grants)}"} if user else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, app.url + path, json=json, headers=headers) as r:
            return r.status, await r.json()


async def start_app(settings: Settings) -> RunningApp:
    from api.app import create_app

    app = await create_app(settings)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return RunningApp(server, settings)


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[RunningApp]:
    app = await start_app(settings)
    try:
        yield app
    finally:
        await app.server.close()
        await asyncio.sleep(0)
