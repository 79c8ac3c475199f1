"""airwave serve --workers N: N nodes behind one port, sticky per client, restarted
when they die, all stopped on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import socketio

from auth import Grants, TokenService
from config import Settings, load_settings
from tests.conftest import PG_URL, REDIS_URL, _require_services, drop_schema, free_port

SECRET = "workers-secret-" + "w" * 32


def _nodes(url: str, token: str) -> list[dict]:
    """This cluster's nodes (other test servers share the Redis)."""
    port = url.rsplit(":", 1)[1]
    request = urllib.request.Request(url + "/api/v1/nodes", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return [n for n in json.loads(r.read())["nodes"] if f":{port}/" in n["id"]]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps in this container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _until(predicate, within: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


async def test_three_workers_share_one_port(tmp_path: Path) -> None:
    await _require_services()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
    env.update(
        AIRWAVE_DATABASE_URL=PG_URL, AIRWAVE_DATABASE_SCHEMA=schema, AIRWAVE_REDIS_URL=REDIS_URL,
        AIRWAVE_JWT_SECRET=SECRET, AIRWAVE_STUN_PORT="0", AIRWAVE_ICE_ADDRESSES="127.0.0.1",
        AIRWAVE_LOG_LEVEL="warning", AIRWAVE_UDP_PORTS="41000-41299",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--workers", "3", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    tokens = TokenService(load_settings({"AIRWAVE_JWT_SECRET": SECRET}))
    admin = tokens.mint("ops", grants=Grants(admin=True))
    try:
        await _until(lambda: len(_nodes(url, admin)) == 3, 40)
        ids = sorted(n["id"] for n in _nodes(url, admin))
        assert [i.rsplit("/", 1)[1] for i in ids] == ["0", "1", "2"]

        # Long-polling works: every request of one client lands on the same worker.
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(url, auth={"token": tokens.mint("ann")}, transports=["polling"], wait_timeout=10)
        assert client.connected
        await client.eio.disconnect(abort=True)

        # A worker killed outright is replaced.
        children = _children(proc.pid)
        assert len(children) == 3
        os.kill(children[0], signal.SIGKILL)
        await _until(lambda: len(_children(proc.pid)) == 3 and children[0] not in _children(proc.pid), 20)
        await _until(lambda: set(_children(proc.pid)) <= {n["pid"] for n in _nodes(url, admin)}, 20)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert _children(proc.pid) == []
    finally:
        if proc.poll() is None:
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait()
        await drop_schema(schema)


async def test_workers_exit_within_a_second_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """Issue 15.14: SIGKILL leaves the supervisor no chance to stop its workers."""
    await _require_services()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
    env.update(
        AIRWAVE_DATABASE_URL=PG_URL, AIRWAVE_DATABASE_SCHEMA=schema, AIRWAVE_REDIS_URL=REDIS_URL,
        AIRWAVE_JWT_SECRET=SECRET, AIRWAVE_STUN_PORT="0", AIRWAVE_ICE_ADDRESSES="127.0.0.1",
        AIRWAVE_LOG_LEVEL="warning",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    admin = TokenService(load_settings({"AIRWAVE_JWT_SECRET": SECRET})).mint("ops", grants=Grants(admin=True))
    children: list[int] = []
    try:
        await _until(lambda: len(_nodes(url, admin)) == 2, 40)
        children = _children(proc.pid)
        assert len(children) == 2
        proc.kill()
        proc.wait()
        await _until(lambda: not any(_running(pid) for pid in children), 3)
    finally:
        for child in children:
            if _running(child):
                os.kill(child, signal.SIGKILL)
        await drop_schema(schema)


def test_workers_need_redis_and_postgres(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--workers", "2", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2 and "AIRWAVE_REDIS_URL" in out.stderr


def test_udp_ranges_are_split_between_workers() -> None:
    from api.workers import udp_slices

    assert udp_slices((40000, 40999), 4) == [(40000, 40249), (40250, 40499), (40500, 40749), (40750, 40999)]
    assert udp_slices(None, 2) == [None, None]
    with pytest.raises(ValueError):
        udp_slices((40000, 40001), 3)


def test_only_worker_0_runs_the_rtmp_ingest() -> None:
    from api.workers import Supervisor, Worker

    supervisor = Supervisor(Settings(rtmp_port=1935, udp_ports=(40000, 40999)), 3, None)
    envs = [supervisor.environment(Worker(i)) for i in range(3)]
    assert "AIRWAVE_RTMP_PORT" not in envs[0] or envs[0]["AIRWAVE_RTMP_PORT"] != "0"
    assert envs[1]["AIRWAVE_RTMP_PORT"] == envs[2]["AIRWAVE_RTMP_PORT"] == "0"
    assert envs[2]["AIRWAVE_UDP_PORTS"] == "40666-40998"


async def test_a_taken_stun_port_is_one_line_and_the_node_runs_on(tmp_path: Path) -> None:
    """Issue 15.15: two nodes on one host; the single-process and the supervisor
    paths behave the same: one line naming the setting, then serve."""
    await _require_services()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("0.0.0.0", 0))
    stun_port = blocker.getsockname()[1]
    schema = f"t_{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
    env.update(
        AIRWAVE_DATABASE_URL=PG_URL, AIRWAVE_DATABASE_SCHEMA=schema, AIRWAVE_REDIS_URL=REDIS_URL,
        AIRWAVE_JWT_SECRET=SECRET, AIRWAVE_STUN_PORT=str(stun_port), AIRWAVE_ICE_ADDRESSES="127.0.0.1",
        AIRWAVE_LOG_LEVEL="warning",
    )
    try:
        for workers in ("1", "2"):  # --workers 1: one process; 2: the supervisor binds STUN
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve", "--workers", workers, "--host", "127.0.0.1",
                 "--port", str(port)],
                cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                await _until(lambda url=url: urllib.request.urlopen(url + "/health/liveness", timeout=2).status == 200, 40)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                log = proc.stderr.read()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert "Traceback" not in log, log
            (line,) = [line for line in log.splitlines() if "STUN" in line]
            assert "AIRWAVE_STUN_PORT" in line and str(stun_port) in line
    finally:
        blocker.close()
        await drop_schema(schema)
