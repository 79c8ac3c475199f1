"""bench.soak: an hour (by default) of churn against one node, watching for leaks.

Broadcasters go live and end (WHIP), viewers join and leave (WHEP), chatters
connect, join the live room, chat, send a gift and leave (Socket.IO and REST),
and pairs of users place, answer and hang up calls. Every minute the script
reports the server's RSS and open file descriptors (``/proc/<pid>``, its whole
process tree) and, from ``/metrics``, its asyncio tasks, media sessions and
sockets. At the end it compares the last third of the run with the first
(after a warm-up minute): a resource that keeps growing is reported as such.

Without ``--url`` it starts its own server (``airwave serve --dev`` on a free
loopback port, SQLite in a temporary directory, per-user limits off); with
``--url`` the server must be in development mode (demo users) and its limits
raised (see docs/benchmarks.md), and ``--server-pid`` gives its process.

    python -m bench.soak                   # one hour, own server
    python -m bench.soak --minutes 10 --out soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aiortc.rtcdtlstransport import RTCCertificate

from .client_ice import use_host_addresses
from .media_clip import VideoSpec, video_clip
from .server_probe import parse_metrics, proc_rss_bytes, process_tree
from .user_tokens import UserToken, dev_tokens
from .whep_viewer import CheapViewer
from .whip_publisher import LoopedClipTrack, WhipPublisher

SOAK_VIDEO = VideoSpec(width=320, height=180, fps=15, bitrate=200_000, seconds=4, gop=30)
UNLIMITED = {
    "AIRWAVE_MAX_SESSIONS_PER_USER": "0", "AIRWAVE_MAX_SESSIONS_PER_IP": "0",
    "AIRWAVE_MAX_CONNECTING_PER_USER": "0", "AIRWAVE_MAX_CONNECTING_PER_IP": "0",
    "AIRWAVE_RATE_LIMIT_HTTP": "0", "AIRWAVE_RATE_LIMIT_HTTP_IP": "0",
    "AIRWAVE_RATE_LIMIT_EVENTS": "0", "AIRWAVE_RATE_LIMIT_ACTIONS": "0",
}
REPO = Path(__file__).resolve().parents[1]
GROWTH_TOLERANCE = {"rss_mb": 0.15, "fds": 0.10, "tasks": 0.10}  # last third over first third


@dataclass(frozen=True)
class Sample:
    minute: float  # since the start
    rss_mb: float
    fds: int
    tasks: int
    sessions: int
    sockets: int


class Churn:
    """The load: each loop runs until ``stop`` is set; failures are counted, not fatal."""

    def __init__(self, http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> None:
        self.http = http
        self.url = url
        self.stop = stop
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.live: tuple[str, str] | None = None  # (room id, broadcaster user id)
        self.certificate = RTCCertificate.generateCertificate()
        self.video = video_clip(SOAK_VIDEO)
        self._users = 0

    async def user(self) -> UserToken:
        self._users += 1
        (token,) = await dev_tokens(self.http, self.url, 1, f"soak{self._users}-")
        return token

    def auth(self, user: UserToken) -> dict[str, str]:
        return {"Authorization": f"Bearer {user.token}"}

    async def pause(self, low: float, high: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), random.uniform(low, high))

    async def loop(self, name: str, action: Callable[[], Awaitable[None]], every: tuple[float, float],
                   concurrent: int = 1) -> None:
        """Start ``action`` every ``every`` seconds, at most ``concurrent`` at once."""
        gate = asyncio.Semaphore(concurrent)
        running: set[asyncio.Task[None]] = set()

        async def one() -> None:
            async with gate:
                try:
                    await asyncio.wait_for(action(), 180)
                    self.done[name] += 1
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    self.failed[f"{name}: {type(exc).__name__}: {str(exc)[:80]}"] += 1

        while not self.stop.is_set():
            if not gate.locked():
                task = asyncio.ensure_future(one())
                running.add(task)
                task.add_done_callback(running.discard)
            await self.pause(*every)
        await asyncio.gather(*running, return_exceptions=True)

    async def broadcast(self) -> None:
        owner = await self.user()
        async with self.http.post(f"{self.url}/api/v1/rooms", json={"type": "live", "title": "soak"},
                                  headers=self.auth(owner)) as r:
            room = (await r.json())["id"]
        publisher = WhipPublisher([LoopedClipTrack("video", self.video, fps=SOAK_VIDEO.fps)])
        try:
            await publisher.start(self.http, f"{self.url}/whip/{room}", owner.token)
            await asyncio.wait_for(publisher.connected.wait(), 20)
            self.live = (room, owner.user_id)
            await self.pause(60, 120)
        finally:
            if self.live == (room, owner.user_id):
                self.live = None
            await publisher.stop(self.http, owner.token)
            async with self.http.post(f"{self.url}/api/v1/rooms/{room}/end", headers=self.auth(owner)) as r:
                await r.read()

    async def watch(self) -> None:
        if self.live is None:
            return
        room, _ = self.live
        viewer_user = await self.user()
        viewer = CheapViewer(self.certificate)
        try:
            await viewer.join(self.http, f"{self.url}/whep/{room}", viewer_user.token)
            await self.pause(5, 25)
        finally:
            await viewer.close(self.http, viewer_user.token)

    async def chat_and_gift(self) -> None:
        if self.live is None:
            return
        room, owner = self.live
        chatter = await self.user()
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(self.url, auth={"token": chatter.token}, transports=["websocket"], wait_timeout=10)
        try:
            await client.call("stream:join", {"roomId": room}, timeout=10)
            for i in range(3):
                await client.call("chat:send", {"roomId": room, "text": f"hello {i}"}, timeout=10)
                await self.pause(1, 3)
            gift = {"giftId": "rose", "to": owner, "roomId": room, "quantity": 1,
                    "idempotencyKey": os.urandom(8).hex()}
            async with self.http.post(f"{self.url}/api/v1/gifts/send", json=gift, headers=self.auth(chatter)) as r:
                if r.status != 200:
                    raise RuntimeError(f"gift: HTTP {r.status}")
            await self.pause(2, 8)
        finally:
            await client.disconnect()

    async def call(self) -> None:
        caller_user, callee_user = await self.user(), await self.user()
        caller = socketio.AsyncClient(reconnection=False)
        callee = socketio.AsyncClient(reconnection=False)
        incoming: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        callee.on("call:incoming", lambda data: incoming.done() or incoming.set_result(data["callId"]))
        for client, user in ((caller, caller_user), (callee, callee_user)):
            await client.connect(self.url, auth={"token": user.token}, transports=["websocket"], wait_timeout=10)
        try:
            ack = await caller.call("call:initiate", {"to": callee_user.user_id, "media": "audio"}, timeout=10)
            if "callId" not in ack:
                raise RuntimeError(f"call:initiate: {ack}")
            call_id = await asyncio.wait_for(incoming, 10)
            await callee.call("call:answer", {"callId": call_id}, timeout=10)
            await self.pause(2, 6)
            await caller.call("call:end", {"callId": call_id}, timeout=10)
        finally:
            await caller.disconnect()
            await callee.disconnect()


async def sample(http: aiohttp.ClientSession, url: str, pid: int, minute: float) -> Sample:
    rss = fds = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            rss += proc_rss_bytes(member)
            fds += len(os.listdir(f"/proc/{member}/fd"))
    async with http.get(f"{url}/metrics") as r:
        metrics = parse_metrics(await r.text())
    return Sample(minute, round(rss / 2**20, 1), fds, int(metrics.get("airwave_asyncio_tasks", 0)),
                  int(metrics.get("airwave_sfu_sessions", 0)), int(metrics.get("airwave_socketio_connections", 0)))


def growth(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """First and last third (the first sample, before any load, left out), and whether it grew
    past tolerance."""
    steady = samples[1:] if len(samples) > 3 else samples
    third = max(1, len(steady) // 3)
    out = {}
    for name, tolerance in GROWTH_TOLERANCE.items():
        first = sum(getattr(s, name) for s in steady[:third]) / third
        last = sum(getattr(s, name) for s in steady[-third:]) / third
        out[name] = {"first": round(first, 1), "last": round(last, 1),
                     "grew": bool(first and (last - first) / first > tolerance)}
    return out


@contextlib.asynccontextmanager
async def own_server() -> AsyncIterator[tuple[str, int]]:
    """``airwave serve --dev`` on a free loopback port, SQLite in a temporary directory."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="airwave-soak-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
        env.update(UNLIMITED, AIRWAVE_DATA_DIR=data, AIRWAVE_STUN_PORT="0", AIRWAVE_ICE_ADDRESSES="127.0.0.1",
                   AIRWAVE_LOG_LEVEL="warning", AIRWAVE_ROOM_PUBLISHER_GRACE="1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "api.cli", "serve", "--dev", "--host", "127.0.0.1", "--port", str(port),
            cwd=REPO, env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        async with http.get(url + "/health/readiness") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    if proc.returncode is not None or time.monotonic() > deadline:
                        raise RuntimeError("the soak's server did not start")
                    await asyncio.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def soak(url: str, pid: int, minutes: float, interval: float = 60) -> dict[str, Any]:
    stop = asyncio.Event()
    samples: list[Sample] = []
    async with aiohttp.ClientSession() as http:
        churn = Churn(http, url, stop)
        loops = [
            churn.loop("broadcast", churn.broadcast, (1, 3), concurrent=2),
            churn.loop("watch", churn.watch, (1, 3), concurrent=8),
            churn.loop("chat_and_gift", churn.chat_and_gift, (2, 4), concurrent=4),
            churn.loop("call", churn.call, (5, 10), concurrent=2),
        ]
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        started = time.monotonic()
        taken = 0
        while True:
            samples.append(await sample(http, url, pid, round((time.monotonic() - started) / 60, 2)))
            print(json.dumps(asdict(samples[-1])), flush=True)
            taken += 1
            next_at = started + taken * interval
            if next_at > started + minutes * 60 + 0.5:
                break
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(5)  # sessions and sockets of the last churn wind down
        after = await sample(http, url, pid, round((time.monotonic() - started) / 60, 2))
    return {
        "minutes": minutes,
        "interval_seconds": interval,
        "samples": [asdict(s) for s in samples],
        "after_churn": asdict(after),
        "growth": growth(samples),
        "done": dict(churn.done),
        "failed": dict(churn.failed.most_common(10)),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60, help="how long to churn (default 60)")
    parser.add_argument("--interval", type=float, default=60, help="seconds between samples (default 60)")
    parser.add_argument("--url", help="a running server (development mode); default: start one")
    parser.add_argument("--server-pid", type=int, help="the server's process, with --url")
    parser.add_argument("--ice-address", action="append", default=[], help="address our clients gather")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.url and not args.server_pid:
        parser.error("--url needs --server-pid (RSS and file descriptors are read from /proc)")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    use_host_addresses(args.ice_address or ["127.0.0.1"])
    if args.url:
        return await soak(args.url.rstrip("/"), args.server_pid, args.minutes, args.interval)
    async with own_server() as (url, pid):
        return await soak(url, pid, args.minutes, args.interval)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({"growth": report["growth"], "done": report["done"], "failed": report["failed"]}, indent=2))
    return 1 if any(g["grew"] for g in report["growth"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
