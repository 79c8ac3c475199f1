"""A real airwave server for the bench scripts: the CLI in a subprocess on
loopback, as an operator runs it; tokens minted with its secret."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from auth import Grants, TokenService
from config import load_settings
from tests.conftest import PG_URL, REDIS_URL, drop_schema, free_port

REPO = Path(__file__).resolve().parents[2]
SECRET = "bench-test-secret-" + "x" * 32


@dataclass
class BenchServer:
    url: str
    pid: int
    env: dict[str, str]

    def token(self, user: str = "bench", *, ttl: float = 600, **grants: object) -> str:
        settings = load_settings({"AIRWAVE_JWT_SECRET": SECRET})
        return TokenService(settings).mint(user, name=user, grants=Grants(**grants), ttl=ttl)


def _wait_up(url: str, proc: subprocess.Popen, deadline: float = 20) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health/liveness", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not come up")


def start_server(tmp: Path, **env_overrides: str) -> tuple[subprocess.Popen, BenchServer]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
    env.update(
        AIRWAVE_DATA_DIR=str(tmp / "data"),
        AIRWAVE_JWT_SECRET=SECRET,
        AIRWAVE_HOST="127.0.0.1",
        AIRWAVE_PORT=str(port),
        AIRWAVE_STUN_PORT="0",
        AIRWAVE_ICE_ADDRESSES="127.0.0.1",
        AIRWAVE_LOG_LEVEL="warning",
        # many viewers from one address and one token: the bench sets its own limits
        AIRWAVE_MAX_SESSIONS_PER_USER="0",
        AIRWAVE_MAX_SESSIONS_PER_IP="0",
        AIRWAVE_MAX_CONNECTING_PER_USER="0",
        AIRWAVE_MAX_CONNECTING_PER_IP="0",
        AIRWAVE_RATE_LIMIT_HTTP="0",
        AIRWAVE_RATE_LIMIT_HTTP_IP="0",
        AIRWAVE_RATE_LIMIT_EVENTS="0",
        AIRWAVE_RATE_LIMIT_ACTIONS="0",
        **env_overrides,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc)
    except AssertionError:
        stop_server(proc)
        raise
    return proc, BenchServer(url, proc.pid, env)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


WEBHOOK_SECRET = "bench-webhook-secret"
RING_TIMEOUT = 2
CALL_DURATION = 6


@pytest.fixture(scope="module")
def production_like_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchServer]:
    """PostgreSQL and Redis, a webhook secret and short call timers (ring 2 s, calls 6 s)."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    proc, server = start_server(
        tmp_path_factory.mktemp("bench-pg-server"),
        AIRWAVE_DATABASE_URL=PG_URL,
        AIRWAVE_DATABASE_SCHEMA=schema,
        AIRWAVE_REDIS_URL=REDIS_URL,
        AIRWAVE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        AIRWAVE_RING_TIMEOUT=str(RING_TIMEOUT),
        AIRWAVE_CALL_DURATION=str(CALL_DURATION),
        AIRWAVE_CALL_WARNING_BEFORE="1",
        AIRWAVE_DEV="true",  # the scripts sign demo users in: development mode, asked for explicitly
    )
    server.env["schema"] = schema
    try:
        yield server
    finally:
        stop_server(proc)
        asyncio.run(drop_schema(schema))


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchServer]:
    # The bench scripts sign demo users in: development mode, asked for explicitly.
    proc, server = start_server(tmp_path_factory.mktemp("bench-server"), AIRWAVE_DEV="true")
    try:
        yield server
    finally:
        stop_server(proc)


def run_bench(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m bench.<module> args`` from the repository root; fails on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args], cwd=REPO, capture_output=True,
        text=True, timeout=timeout,
    )
    assert result.returncode == 0, f"bench.{module} failed:\n{result.stdout}\n{result.stderr}"
    return result
