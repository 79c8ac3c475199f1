"""A cluster of airwave node processes on loopback for multi-node tests.

:class:`Cluster` starts N ``python -m api.cli serve`` processes that share one
PostgreSQL schema (unique per cluster, dropped at :meth:`Cluster.stop`), one
Redis (the suite's, or any ``redis_url``) under a unique key prefix, and one JWT
secret. Each node gets its own HTTP port, node id ``node-<i>`` and UDP port
range. Nodes can be killed (SIGKILL), stopped (SIGTERM) and started again.

    async with Cluster(3, ring_timeout=2) as cluster:
        a, b, c = cluster.nodes
        token = cluster.token("ann")
        sio = await cluster.socket(a, "ann")   # connected socketio.AsyncClient

Extra keyword arguments are settings (``ring_timeout=2`` becomes
``AIRWAVE_RING_TIMEOUT=2``) for every node; ``node_env`` adds per-node ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from auth import Grants, TokenService
from config import load_settings
from tests.conftest import PG_URL, REDIS_URL, _require_services, drop_schema, free_port

SECRET = "cluster-secret-" + "c" * 32
REPO = Path(__file__).resolve().parents[2]
UDP_BASE = 42000
UDP_PER_NODE = 200


class Node:
    """One airwave process of the cluster."""

    def __init__(self, index: int, env: dict[str, str], workdir: Path) -> None:
        self.index = index
        self.port = int(env["AIRWAVE_PORT"])
        self.node_id = env["AIRWAVE_NODE_ID"]
        self.env = env
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.node_id}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.node_id} already runs"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--workers", "1",
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    async def wait_ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"{self.node_id} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(self.url + "/health/readiness", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.node_id} not ready in {within}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the process ends at once, with no cleanup of any kind."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    async def terminate(self, within: float = 30.0) -> int:
        """SIGTERM and wait for the drain to finish; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + within
            while self.proc.poll() is None:
                if time.monotonic() > deadline:
                    self.proc.kill()
                    self.proc.wait()
                    raise AssertionError(f"{self.node_id} did not stop on SIGTERM:\n{self.log_tail()}")
                await asyncio.sleep(0.05)
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Cluster:
    """N airwave nodes sharing PostgreSQL and Redis. Use as ``async with``."""

    def __init__(
        self,
        size: int = 3,
        *,
        redis_url: str = REDIS_URL,
        node_env: dict[int, dict[str, Any]] | None = None,
        **settings: Any,
    ) -> None:
        self.size = size
        self.redis_url = redis_url
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        self.prefix = f"test-{self.schema}"
        self._tmp = tempfile.TemporaryDirectory(prefix="airwave-cluster-")
        self.workdir = Path(self._tmp.name)
        self.tokens = TokenService(load_settings({"AIRWAVE_JWT_SECRET": SECRET}))
        self.sockets: list[socketio.AsyncClient] = []
        common = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
        common.update(
            AIRWAVE_DATABASE_URL=PG_URL,
            AIRWAVE_DATABASE_SCHEMA=self.schema,
            AIRWAVE_REDIS_URL=redis_url,
            AIRWAVE_REDIS_PREFIX=self.prefix,
            AIRWAVE_JWT_SECRET=SECRET,
            AIRWAVE_STUN_PORT="0",
            AIRWAVE_ICE_ADDRESSES="127.0.0.1",
            AIRWAVE_LOG_LEVEL="warning",
        )
        common.update({f"AIRWAVE_{k.upper()}": str(v) for k, v in settings.items()})
        udp_base = UDP_BASE + (os.getpid() % 20) * UDP_PER_NODE * 4
        self.nodes: list[Node] = []
        for i in range(size):
            env = dict(common)
            port = free_port()
            low = udp_base + i * UDP_PER_NODE
            env.update(
                AIRWAVE_PORT=str(port),
                AIRWAVE_NODE_ID=f"node-{i}",
                AIRWAVE_INTERNAL_URL=f"http://127.0.0.1:{port}",
                AIRWAVE_DATA_DIR=str(self.workdir / f"data-{i}"),
                AIRWAVE_UDP_PORTS=f"{low}-{low + UDP_PER_NODE - 1}",
            )
            env.update({f"AIRWAVE_{k.upper()}": str(v) for k, v in (node_env or {}).get(i, {}).items()})
            self.nodes.append(Node(i, env, self.workdir))

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await _require_services()
        try:
            # The first node applies the migrations; the others start together after it.
            self.nodes[0].start()
            await self.nodes[0].wait_ready()
            for node in self.nodes[1:]:
                node.start()
            await asyncio.gather(*(node.wait_ready() for node in self.nodes[1:]))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for sio in self.sockets:
            if sio.connected:
                try:
                    await asyncio.wait_for(sio.disconnect(), 3)
                except Exception:
                    pass
        self.sockets.clear()
        for node in self.nodes:
            if node.running:
                try:
                    await node.terminate(within=15)
                except AssertionError:
                    pass
        await drop_schema(self.schema)
        self._tmp.cleanup()

    async def restart(self, node: Node) -> None:
        """Start a stopped or killed node again and wait until it is ready."""
        node.start()
        await node.wait_ready()

    def token(self, user: str, *, name: str = "", ttl: float = 600, **grants: Any) -> str:
        return self.tokens.mint(user, name=name or user, grants=Grants(**grants), ttl=ttl)

    async def socket(self, node: Node, user: str, **grants: Any) -> socketio.AsyncClient:
        """A Socket.IO client of ``user`` connected to ``node`` (websocket), closed at stop."""
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(
            node.url, auth={"token": self.token(user, **grants)}, transports=["websocket"], wait_timeout=5
        )
        self.sockets.append(sio)
        return sio

    def logs(self) -> str:
        return "\n".join(f"--- {n.node_id}\n{n.log_tail()}" for n in self.nodes)


__all__ = ["Cluster", "Node", "SECRET"]
