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


def test_workers_of_a_dev_supervisor_are_in_dev_mode_and_others_not(monkeypatch) -> None:
    """`serve --dev --workers N`: the workers answer the demo sign-in too (they missed it)."""
    from api.workers import Supervisor, Worker

    monkeypatch.delenv("AIRWAVE_DEV", raising=False)
    assert Supervisor(Settings(dev=True), 2, None).environment(Worker(1))["AIRWAVE_DEV"] == "true"
    assert "AIRWAVE_DEV" not in Supervisor(Settings(), 2, None).environment(Worker(1))


def test_every_worker_gets_its_own_internal_url() -> None:
    """Other nodes must reach one worker, not the shared port the supervisor hands out by address."""
    from api.workers import Supervisor

    for settings, host in ((Settings(host="0.0.0.0", port=8080), "127.0.0.1"),
                           (Settings(host="127.0.0.1", internal_url="http://127.0.0.1:9000"), "127.0.0.1"),
                           (Settings(host="::1"), "[::1]")):
        supervisor = Supervisor(settings, 2, None)
        supervisor.open_internal_listeners()
        try:
            urls = [supervisor.environment(w)["AIRWAVE_INTERNAL_URL"] for w in supervisor.workers]
            ports = [w.internal.getsockname()[1] for w in supervisor.workers]  # type: ignore[union-attr]
            assert urls == [f"http://{host}:{p}" for p in ports]
            assert len(set(ports)) == 2 and not {8080, 9000} & set(ports)
        finally:
            for worker in supervisor.workers:
                worker.internal.close()  # type: ignore[union-attr]


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


def _addresses_by_worker(workers: int, count: int) -> list[list[str]]:
    """127.0.0.x source addresses that the supervisor hands to each worker, ``count`` per worker."""
    from api.workers import pick_worker

    chosen: list[list[str]] = [[] for _ in range(workers)]
    for last in range(2, 255):
        address = f"127.0.0.{last}"
        picked = chosen[pick_worker(address, workers)]
        if len(picked) < count:
            picked.append(address)
    return chosen


def _decoded_vp8(frames: list[bytes]) -> int:
    """How many of ``frames`` a VP8 decoder turns into pictures."""
    import av

    decoder = av.CodecContext.create("vp8", "r")
    return sum(len(decoder.decode(av.Packet(frame))) for frame in frames)


@pytest.mark.serial
async def test_viewers_on_every_worker_watch_a_room_published_on_one(tmp_path: Path) -> None:
    """A viewer handed to a worker other than the room's origin is served through
    an edge pull to the origin worker's own internal port (not the shared port,
    where the supervisor would hand the pull to whichever worker the address maps to)."""
    import aiohttp

    from tests.sfu.sfu_media import encoded_vp8
    from tests.sfu.sfu_peers import PacketTrack, Publisher, Viewer, vp8_keyframe, wait_for

    await _require_services()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
    env.update(
        AIRWAVE_DATABASE_URL=PG_URL, AIRWAVE_DATABASE_SCHEMA=schema, AIRWAVE_REDIS_URL=REDIS_URL,
        AIRWAVE_JWT_SECRET=SECRET, AIRWAVE_STUN_PORT="0", AIRWAVE_ICE_ADDRESSES="127.0.0.1",
        AIRWAVE_LOG_LEVEL="warning", AIRWAVE_UDP_PORTS="42000-42199",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--workers", "2", "--host", "0.0.0.0", "--port", str(port)],
        cwd=tmp_path, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    tokens = TokenService(load_settings({"AIRWAVE_JWT_SECRET": SECRET}))
    admin = tokens.mint("ops", grants=Grants(admin=True))
    on_worker = _addresses_by_worker(2, 3)
    video = PacketTrack("video", encoded_vp8(60))
    publisher = Publisher([video])
    viewers: list[Viewer] = []
    sessions: list[aiohttp.ClientSession] = []

    def from_address(address: str) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))
        sessions.append(session)
        return session

    try:
        await _until(lambda: len(_nodes(url, admin)) == 2, 40)
        sdp = {"Content-Type": "application/sdp"}
        publish = {"Authorization": f"Bearer {tokens.mint('ann', grants=Grants(room='show', publish=True))}", **sdp}
        async with from_address(on_worker[0][0]).post(f"{url}/whip/show", data=await publisher.offer(),
                                                      headers=publish) as r:
            assert r.status == 201, await r.text()
            await publisher.accept(await r.text())

        watch = {"Authorization": f"Bearer {tokens.mint('viewer', grants=Grants(room='show', subscribe=True))}",
                 **sdp}
        for address in on_worker[0][1:] + on_worker[1]:
            # the origin is claimed in Redis just after the WHIP answer: retry a 404 meanwhile
            deadline = time.monotonic() + 10
            while True:
                viewer = Viewer(("video",))
                viewers.append(viewer)
                async with from_address(address).post(f"{url}/whep/show", data=await viewer.offer(),
                                                      headers=watch) as r:
                    body = await r.text()
                if r.status == 201:
                    await viewer.accept(body)
                    break
                await viewers.pop().close()
                assert r.status == 404 and time.monotonic() < deadline, (address, r.status, body)
                await asyncio.sleep(0.2)

        await wait_for(lambda: all(len(v.frames["video"]) >= 20 for v in viewers), 20)
        for viewer in viewers:
            got = [frame for _, frame in viewer.frames["video"]]
            assert vp8_keyframe(got[0])
            assert _decoded_vp8(got) >= 20
    finally:
        for viewer in viewers:
            await viewer.close()
        await publisher.close()
        for session in sessions:
            await session.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for child in _children(proc.pid):
                    os.kill(child, signal.SIGKILL)
                proc.kill()
                proc.wait()
        await drop_schema(schema)
