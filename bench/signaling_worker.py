"""A worker process that holds many cheap Socket.IO sockets for bench.signaling.

Each socket speaks Engine.IO 4 / Socket.IO 5 over its own WebSocket, which it
speaks itself on a TCP connection (no client library), with nothing else on top: the
handshake, pings, event packets with ack ids, and a receive path that reads only the
``clientId`` of ``chat:message`` (which carries its send time, ``CLOCK_MONOTONIC``
nanoseconds, shared by every process of this machine). A python-socketio client
costs several times the server's CPU per message received, and aiohttp's WebSocket
client more than a server's per connect; this one keeps the load generator off its
own figures.

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
import base64
import hashlib
import itertools
import json
import os
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from .load import LagWatch, read_config, reply, serve_commands

MARK = '"clientId":"'
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
ZERO_MASK = bytes(4)


class CheapSocket(asyncio.Protocol):
    """One Socket.IO client on its own TCP connection, speaking the WebSocket protocol
    itself (RFC 6455: the upgrade request, then frames): connect with ``auth``, emit with
    acks, count ``chat:message`` deliveries of the current step as they arrive, with no
    task per socket. aiohttp's client cost about 1 ms of the generator's CPU per connect
    + join, more than the servers it measured (the Node room's 0.56 ms), so the generator
    bounded the connection rate. Frames out are masked with a zero key (the payload as
    it is): fine for a load generator, not for a browser's untrusted page."""

    def __init__(self, pool: SocketPool, token: str) -> None:
        self.pool = pool
        self.caps = pool.caps
        self.token = token
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[None] | None = None
        self.accept = b""  # the Sec-WebSocket-Accept the server must answer
        self.early: list[str] = []  # texts before the Socket.IO connect completed
        self.waiter: asyncio.Future[None] | None = None
        self.live = False  # Socket.IO connected: texts are dispatched as they come
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.next_ack = itertools.count()
        self.closed = False

    # -- the WebSocket
    async def connect(self, source: str) -> None:
        pool = self.pool
        loop = asyncio.get_running_loop()
        self.upgraded = loop.create_future()
        await asyncio.wait_for(loop.create_connection(
            lambda: self, pool.host, pool.port, ssl=pool.ssl, local_addr=(source, 0),
            server_hostname=pool.host if pool.ssl else None), 10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
        assert self.transport is not None
        self.transport.write((
            f"GET {pool.path} HTTP/1.1\r\nHost: {pool.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode())
        await asyncio.wait_for(self.upgraded, 10)
        opened = await self.next_text()
        if not opened.startswith("0"):
            raise RuntimeError(f"engine.io open expected, got {opened[:40]!r}")
        auth: dict[str, Any] = {"token": self.token}
        if self.caps:
            auth["caps"] = self.caps
        self.send("40" + json.dumps(auth))
        while True:
            reply = await self.next_text()
            if reply == "2":
                self.send("3")
                continue
            break
        if reply.startswith("44"):
            raise RuntimeError(f"connect refused: {reply[2:200]}")
        if not reply.startswith("40"):
            raise RuntimeError(f"socket.io connect expected, got {reply[:40]!r}")
        self.live = True
        early, self.early = self.early, []
        for text in early:
            self.on_text(text)

    async def next_text(self) -> str:
        while not self.early:
            if self.closed:
                raise ConnectionError("the server closed the connection")
            self.waiter = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self.waiter, 10)
        return self.early.pop(0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.upgraded is not None and not self.upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            del buffer[:end + 4]
            if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
                self.upgraded.set_exception(RuntimeError(f"no WebSocket upgrade: {head[:60]!r}"))
                return
            self.upgraded.set_result(None)
        while len(buffer) >= 2:
            opcode, size, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size, start = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + size:
                return
            payload = bytes(buffer[start:start + size])
            del buffer[:start + size]
            if opcode == 0x1:  # the server sends each message in one frame
                self.on_text(payload.decode())
            elif opcode == 0x9:
                self.frame(0xA, payload)
            elif opcode == 0x8:
                self.close_now()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.pool.disconnected += 1
        self.closed = True
        for future in (self.upgraded, self.waiter, *self.acks.values()):
            if future is not None and not future.done():
                future.set_exception(ConnectionError("connection lost"))

    def frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        size = len(payload)
        if size < 126:
            head = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
        self.transport.write(head + ZERO_MASK + payload)

    def send(self, text: str) -> None:
        self.frame(0x1, text.encode())

    # -- Socket.IO
    def on_text(self, text: str) -> None:
        if not self.live:
            self.early.append(text)
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
            return
        if text.startswith("42["):
            self.pool.delivered(text)
        elif text == "2":
            self.send("3")
        elif text.startswith("43"):
            bracket = text.find("[")
            future = self.acks.get(int(text[2:bracket]))
            if future is not None and not future.done():
                future.set_result(json.loads(text[bracket:])[0])
        elif text.startswith("41"):
            self.close_now()

    async def call(self, event: str, data: Any, wait_seconds: float = 10) -> Any:
        ack_id = next(self.next_ack)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[ack_id] = future
        try:
            self.send(f"42{ack_id}" + json.dumps([event, data]))
            return await asyncio.wait_for(future, wait_seconds)
        finally:
            self.acks.pop(ack_id, None)

    def close_now(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.frame(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()

    async def close(self) -> None:
        self.closed = True
        self.close_now()


class SocketPool:
    def __init__(self, url: str, room: str, sources: list[str], worker: int,
                 caps: list[str]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.path = "/socket.io/?EIO=4&transport=websocket"
        self.sources = sources
        self.room = room
        self.worker = worker
        self.caps = caps
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
                    await socket.connect(self.sources[i % len(self.sources)])
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
