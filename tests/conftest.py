"""Fixtures every suite shares: settings, both database backends, a running app.

The embedded default (SQLite, in-process bus) and production (PostgreSQL plus
Redis) are both exercised: fixtures parametrised with ``backend`` run once per
column. PostgreSQL and Redis are the suite's own (tests/services.py): started
once per run on free loopback ports and removed after it, unless
AIRWAVE_TEST_PG_URL / AIRWAVE_TEST_REDIS_URL name servers to use instead. xdist
workers inherit the URLs from the controller; ``PG_URL`` and ``REDIS_URL`` read
them when a test module imports them. A server that cannot be had fails the
run with what to install, it never skips.

Tests marked ``serial`` (browsers, coturn, FFmpeg, several-node clusters,
shaped links: they flake when the CPU is contended) run in a second, serial
pytest; ``make test`` runs both (tests/suite.py). Marked here: by path, and any
test whose module imports ``chromium`` from tests/webapp/browser.py or
``CoturnProcess``, or that uses the ``coturn`` fixture; anything else CPU-heavy
says ``pytestmark = pytest.mark.serial`` itself.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
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
from sfu import aiortc_seam
from tests.services import PrivateServices, ServicesUnavailable

SERVICE_URLS = {"PG_URL": "AIRWAVE_TEST_PG_URL", "REDIS_URL": "AIRWAVE_TEST_REDIS_URL"}
BACKENDS = ["embedded", "postgres"]
# What puts a test in the serial pytest besides its own ``serial`` mark: its path, or
# a helper in its module that starts Chromium or coturn (browser tests live elsewhere too).
SERIAL_PATHS = (
    "tests/webapp/",
    "tests/cluster/",
    "tests/netlab/",
    "tests/api/test_ffmpeg_whip.py",
    "tests/api/test_rtmp.py",
)
SERIAL_HELPERS = {("tests.webapp.browser", "chromium"), ("tests.turn.turn_testing", "CoturnProcess")}
SERIAL_FIXTURES = {"coturn"}
_private_services: list[PrivateServices] = []


def _service_url(env: str) -> str:
    """The URL in ``env``, starting the private services first when it is not set."""
    if not os.environ.get(env):
        _start_private_services()
    return os.environ[env]


def _start_private_services() -> None:
    """Start a private PostgreSQL/Redis for whichever URL is not given. The controller does
    this in pytest_configure (or earlier, when a conftest imports PG_URL); xdist workers
    inherit its environment and so start nothing."""
    missing = [env for env in SERVICE_URLS.values() if not os.environ.get(env)]
    if not missing:
        return
    services = PrivateServices(
        want_postgres="AIRWAVE_TEST_PG_URL" in missing,
        want_redis="AIRWAVE_TEST_REDIS_URL" in missing,
    )
    services.start()
    _private_services.append(services)
    atexit.register(services.stop)  # also when pytest dies before pytest_unconfigure
    if services.pg_url:
        os.environ["AIRWAVE_TEST_PG_URL"] = services.pg_url
    if services.redis_url:
        os.environ["AIRWAVE_TEST_REDIS_URL"] = services.redis_url


def __getattr__(name: str) -> str:
    """``PG_URL`` / ``REDIS_URL``: the servers of this run (``from tests.conftest import PG_URL``)."""
    if name in SERVICE_URLS:
        return _service_url(SERVICE_URLS[name])
    raise AttributeError(name)


def pg_url() -> str:
    return _service_url("AIRWAVE_TEST_PG_URL")


def redis_url() -> str:
    return _service_url("AIRWAVE_TEST_REDIS_URL")


def pytest_configure(config: pytest.Config) -> None:
    try:
        _start_private_services()
    except ServicesUnavailable as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_unconfigure(config: pytest.Config) -> None:
    while _private_services:
        services = _private_services.pop()
        services.stop()
        urls = {"AIRWAVE_TEST_PG_URL": services.pg_url, "AIRWAVE_TEST_REDIS_URL": services.redis_url}
        for env, url in urls.items():
            if url and os.environ.get(env) == url:
                del os.environ[env]


def _is_serial(item: pytest.Item, root: Path) -> bool:
    if item.path.is_relative_to(root) and item.path.relative_to(root).as_posix().startswith(SERIAL_PATHS):
        return True
    if SERIAL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    return module is not None and any(
        (value.__module__, value.__name__) in SERIAL_HELPERS
        for value in vars(module).values()
        if inspect.isfunction(value) or inspect.isclass(value)
    )


@pytest.hookimpl(tryfirst=True)  # before -m "not serial" deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_serial(item, config.rootpath):
            item.add_marker(pytest.mark.serial)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _require_services() -> None:
    try:
        conn = await asyncpg.connect(pg_url(), timeout=5)
        await conn.close()
    except Exception as exc:  # fail, never skip: CI must have PostgreSQL
        pytest.fail(f"PostgreSQL is required at {pg_url()}: {exc}")
    client = aioredis.from_url(redis_url())
    try:
        await client.ping()
    except Exception as exc:
        pytest.fail(f"Redis is required at {redis_url()}: {exc}")
    finally:
        await client.aclose()


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(pg_url(), timeout=5)
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
    monkeypatch.setattr(aiortc_seam, "_listings", {})  # no listing of another test's
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
                AIRWAVE_DATABASE_URL=pg_url(),
                AIRWAVE_DATABASE_SCHEMA=schema,
                AIRWAVE_REDIS_URL=redis_url(),
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
