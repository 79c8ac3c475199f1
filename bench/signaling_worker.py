"""A worker process that holds many cheap Socket.IO sockets for bench.signaling.

Each socket speaks Engine.IO 4 / Socket.IO 5 over one aiohttp WebSocket, with
nothing else on top: the handshake, pings, event packets with ack ids, and a
receive path that reads only the ``clientId`` of ``chat:message`` (which carries
its send time, ``CLOCK_MONOTONIC`` nanoseconds, shared by every process of this
machine). A python-socketio client costs several times the server's CPU per
message received; this one keeps the load generator off its own figures.

Started by the controller as ``python -m bench.signaling_worker``; JSON lines.
The first line is its configuration ``{"url", "room", "sources", "lifetime",
"worker", "caps"}`` (``caps: ["batch"]``: announce it on connect and count the chat
messages inside ``batch`` events), then commands, each answered by one line:

* ``{"op": "connect", "tokens": [...], "concurrency": C}`` ->
  ``{"op": "connected", "ok", "failed", "errors", "connect_ms"}``
* ``{"op": "send", "step", "senders", "rate", "start_at", "duration"}`` -> ``{"op": "sending"}``
  at once; then ``{"op": "sent"}`` -> ``{"op": "sent", "sent", "refused", "ack_ms"}`` when the
  sending is over
* ``{"op": "snapshot", "step"}`` -> ``{"op": "snapshot", "received", "histogram",
  "lag_max_ms", "lag_p99_ms", "disconnected"}`` (histogram: delivery latency in whole
  milliseconds -> count, for that step's messages)
* ``{"op": "close"}`` -> close every socket, ``{"op": "closed"}``, exit
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .load import LagWatch, read_config, reply, serve_commands

MARK = '"clientId":"'


class CheapSocket:
    """One Socket.IO client over a raw WebSocket: connect with ``auth``, emit with
    acks, count ``chat:message`` deliveries of the current step."""

    def __init__(self, pool: SocketPool, token: str) -> None:
        self.pool = pool
        self.caps = pool.caps
        self.token = token
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.next_ack = itertools.count()
        self.reader: asyncio.Task[None] | None = None
        self.closed = False

    async def connect(self, session: aiohttp.ClientSession, ws_url: str) -> None:
        self.ws = await session.ws_connect(ws_url, autoping=False, max_msg_size=1 << 20,
                                           timeout=aiohttp.ClientWSTimeout(ws_close=2))
        opened = await self.ws.receive_str(timeout=10)
        if not opened.startswith("0"):
            raise RuntimeError(f"engine.io open expected, got {opened[:40]!r}")
        auth: dict[str, Any] = {"token": self.token}
        if self.caps:
            auth["caps"] = self.caps
        await self.ws.send_str("40" + json.dumps(auth))
        while True:
            reply = await self.ws.receive_str(timeout=10)
            if reply == "2":
                await self.ws.send_str("3")
                continue
            break
        if reply.startswith("44"):
            raise RuntimeError(f"connect refused: {reply[2:200]}")
        if not reply.startswith("40"):
            raise RuntimeError(f"socket.io connect expected, got {reply[:40]!r}")
        self.reader = asyncio.get_running_loop().create_task(self.read())

    async def call(self, event: str, data: Any, wait_seconds: float = 10) -> Any:
        assert self.ws is not None
        ack_id = next(self.next_ack)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[ack_id] = future
        try:
            await self.ws.send_str(f"42{ack_id}" + json.dumps([event, data]))
            return await asyncio.wait_for(future, wait_seconds)
        finally:
            self.acks.pop(ack_id, None)

    async def read(self) -> None:
        assert self.ws is not None
        pool = self.pool
        try:
            async for message in self.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                text: str = message.data
                if text.startswith("42["):
                    pool.delivered(text)
                elif text == "2":
                    await self.ws.send_str("3")
                elif text.startswith("43"):
                    bracket = text.find("[")
                    future = self.acks.get(int(text[2:bracket]))
                    if future is not None and not future.done():
                        future.set_result(json.loads(text[bracket:])[0])
                elif text.startswith("41"):
                    break
        except (aiohttp.ClientError, ConnectionError, ValueError):
            pass
        finally:
            if not self.closed:
                pool.disconnected += 1
            self.closed = True

    async def close(self) -> None:
        self.closed = True
        if self.ws is not None and not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                pass
        if self.reader is not None:
            self.reader.cancel()


class SocketPool:
    def __init__(self, url: str, room: str, sources: list[str], worker: int,
                 caps: list[str]) -> None:
        parts = urlsplit(url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.ws_url = f"{scheme}://{parts.netloc}/socket.io/?EIO=4&transport=websocket"
        self.room = room
        self.worker = worker
        self.caps = caps
        self.sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(s, 0)))
            for s in sources
        ]
        self.sockets: list[CheapSocket] = []
        self.step = -1
        self.step_prefix = ""
        self.received = 0
        self.histogram: dict[int, int] = {}
        self.disconnected = 0
        self.lag = LagWatch()

    def delivered(self, text: str) -> None:
        """A ``chat:message``, or a ``batch`` of events holding several: each clientId of
        this step is one delivery."""
        at = text.find(MARK)
        now_ns = time.monotonic_ns()
        while at >= 0:
            start = at + len(MARK)
            end = text.find('"', start)
            client_id = text[start:end]  # "s<step>-<worker>-<n>-<monotonic ns>"
            if client_id.startswith(self.step_prefix):
                ms = (now_ns - int(client_id.rsplit("-", 1)[1])) // 1_000_000
                self.received += 1
                self.histogram[ms] = self.histogram.get(ms, 0) + 1
            at = text.find(MARK, end)

    async def connect(self, tokens: list[str], concurrency: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(max(1, concurrency))
        errors: list[str] = []
        times: list[float] = []
        failed = 0

        async def one(i: int, token: str) -> None:
            nonlocal failed
            socket = CheapSocket(self, token)
            async with gate:
                t0 = time.monotonic()
                try:
                    await socket.connect(self.sessions[i % len(self.sessions)], self.ws_url)
                    ack = await socket.call("stream:join", {"roomId": self.room})
                    if isinstance(ack, dict) and "error" in ack:
                        raise RuntimeError(f"stream:join: {ack['error']}")
                except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                    failed += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    await socket.close()
                    return
                times.append(round((time.monotonic() - t0) * 1000, 2))
            self.sockets.append(socket)

        base = len(self.sockets)
        await asyncio.gather(*(one(base + i, t) for i, t in enumerate(tokens)))
        return {"op": "connected", "ok": len(times), "failed": failed, "errors": errors,
                "connect_ms": times}

    async def send(self, step: int, senders: int, rate: float, start_at: float,
                   duration: float) -> dict[str, Any]:
        """``senders`` of this worker's sockets send ``rate`` messages a second in all."""
        self.step = step
        self.step_prefix = f"s{step}-"
        self.received = 0
        self.histogram = {}
        live = [s for s in self.sockets if not s.closed][:senders]
        refused: dict[str, int] = {}
        acks: list[float] = []
        sent = 0
        if not live or rate <= 0:
            return {"op": "sent", "sent": 0, "refused": refused, "ack_ms": acks}
        interval = len(live) / rate
        end = start_at + duration

        async def loop(i: int, socket: CheapSocket) -> None:
            nonlocal sent
            n = 0
            next_at = start_at + i / rate
            while next_at < end:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                t = time.monotonic_ns()
                client_id = f"s{step}-{self.worker}-{i}x{n}-{t}"
                sent += 1
                try:
                    ack = await socket.call("chat:send", {
                        "roomId": self.room, "text": f"bench message {n}", "clientId": client_id,
                    })
                except Exception as exc:  # noqa: BLE001 - counted
                    ack = {"error": {"code": type(exc).__name__}}
                if isinstance(ack, dict) and "error" in ack:
                    code = str(ack["error"].get("code"))
                    refused[code] = refused.get(code, 0) + 1
                else:
                    acks.append(round((time.monotonic_ns() - t) / 1e6, 2))
                n += 1
                next_at += interval

        await asyncio.gather(*(loop(i, s) for i, s in enumerate(live)))
        return {"op": "sent", "sent": sent, "refused": refused, "ack_ms": acks}

    def snapshot(self) -> dict[str, Any]:
        return {"op": "snapshot", "received": self.received,
                "histogram": {str(k): v for k, v in self.histogram.items()},
                **self.lag.take(), "disconnected": self.disconnected,
                "sockets": len(self.sockets)}

    async def close(self) -> None:
        gate = asyncio.Semaphore(64)

        async def one(s: CheapSocket) -> None:
            async with gate:
                await s.close()

        await asyncio.gather(*(one(s) for s in self.sockets))
        for session in self.sessions:
            await session.close()


async def serve() -> None:
    reader, config = await read_config()
    pool = SocketPool(config["url"], config["room"], config.get("sources") or ["127.0.0.1"],
                      int(config.get("worker", 0)), list(config.get("caps") or []))
    lag_task = asyncio.get_running_loop().create_task(pool.lag.watch())
    sending: asyncio.Task[dict[str, Any]] | None = None

    async def handle(command: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal sending
        op = command.get("op")
        if op == "connect":
            return await pool.connect(list(command["tokens"]), int(command.get("concurrency", 20)))
        if op == "send":
            sending = asyncio.get_running_loop().create_task(pool.send(
                int(command["step"]), int(command["senders"]), float(command["rate"]),
                float(command["start_at"]), float(command["duration"])))
            return {"op": "sending"}
        if op == "sent":
            done = await sending if sending is not None else {"op": "sent", "sent": 0}
            sending = None
            return done
        if op == "snapshot":
            return pool.snapshot()
        return None

    try:
        await serve_commands(reader, float(config.get("lifetime", 900)), handle)
    finally:
        lag_task.cancel()
        if sending is not None:
            sending.cancel()
        await pool.close()
    reply({"op": "closed"})


def main() -> None:
    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    main()
