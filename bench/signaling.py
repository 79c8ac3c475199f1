"""bench.signaling: Socket.IO connections in one live room and chat fan-out.

M sockets connect (``--connections``) and ``stream:join`` one live room; the
connection set-up rate and per-connection set-up time (connect plus join ack)
are measured. Then ``--senders`` of them send ``chat:send`` at ``--rate``
messages a second in total for ``--duration`` seconds; every socket of the
room receives every ``chat:message``. Measured: messages sent and acked,
deliveries per second (the fan-out rate), delivery latency from send to
receipt at each socket (p50/p99), the ack latency, and deliveries missing
after a drain of ``--drain`` seconds. All clients run in this process, so
latency is one clock.

    python -m bench.signaling --url http://127.0.0.1:8080 --token ADMIN_OR_USER_TOKEN \\
        --connections 200 --senders 20 --rate 50 --duration 10 --out signaling.json

Users: ``--tokens-file`` (one token per line), else the development sign-in
``POST /api/v1/dev/token`` when the server has it. ``--token`` creates the room
(``POST /api/v1/rooms``) unless ``--room`` names an existing live room.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import aiohttp
import socketio

from .report import chart_latency, finite, format_table, percentile, run_script
from .server_probe import ServerProbe
from .user_tokens import UserToken, user_tokens


class ChatSocket:
    def __init__(self, user: UserToken, sent_at: dict[str, float], deliveries: list[float]) -> None:
        self.user = user
        self.client = socketio.AsyncClient(reconnection=False)
        self.received = 0
        self.connect_ms: float | None = None
        self.error: str | None = None

        @self.client.on("chat:message")
        async def on_message(data: Any) -> None:
            at = sent_at.get(data.get("clientId", "")) if isinstance(data, dict) else None
            if at is not None:
                self.received += 1
                deliveries.append((time.monotonic() - at) * 1000)

    async def connect(self, url: str, room: str) -> None:
        t0 = time.monotonic()
        try:
            await self.client.connect(url, auth={"token": self.user.token},
                                      transports=["websocket"], wait_timeout=10)
            ack = await self.client.call("stream:join", {"roomId": room}, timeout=10)
            if isinstance(ack, dict) and "error" in ack:
                raise RuntimeError(f"stream:join: {ack['error']}")
            self.connect_ms = (time.monotonic() - t0) * 1000
        except Exception as exc:  # noqa: BLE001 - reported
            self.error = f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.disconnect(), 5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass


async def create_room(http: aiohttp.ClientSession, url: str, token: str) -> str:
    body = {"type": "live", "title": f"bench {uuid.uuid4().hex[:6]}", "public": True}
    async with http.post(f"{url}/api/v1/rooms", json=body,
                         headers={"Authorization": f"Bearer {token}"}) as r:
        data = await r.json()
        if r.status != 201:
            raise SystemExit(f"POST /api/v1/rooms: HTTP {r.status}: {data}")
        return data["id"]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.url.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        probe = ServerProbe(http, url, args.server_pid)
        users = await user_tokens(http, url, args.connections, tokens_file=args.tokens_file,
                                  prefix="bench-sig-")
        room = args.room or await create_room(http, url, args.token or users[0].token)
        sent_at: dict[str, float] = {}
        deliveries: list[float] = []
        sockets = [ChatSocket(u, sent_at, deliveries) for u in users]
        gate = asyncio.Semaphore(args.connect_concurrency)

        async def connect(s: ChatSocket) -> None:
            async with gate:
                await s.connect(url, room)

        try:
            t0 = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(connect(s) for s in sockets)),
                                   60 + args.connections * 0.5)
            connect_seconds = time.monotonic() - t0
            ready = [s for s in sockets if s.error is None]
            senders = ready[: args.senders]
            if not senders:
                raise SystemExit(f"no socket connected: {sockets[0].error}")
            acks: list[float] = []
            refused: dict[str, int] = {}
            per_sender = args.rate / len(senders)
            start_cpu = await probe.sample()
            start = time.monotonic()
            end = start + args.duration

            async def send_loop(i: int, s: ChatSocket) -> None:
                n = 0
                next_at = start + i / args.rate
                while next_at < end:
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    client_id = f"b{i}-{n}-{uuid.uuid4().hex[:6]}"
                    sent_at[client_id] = t = time.monotonic()
                    try:
                        ack = await s.client.call("chat:send", {
                            "roomId": room, "text": f"bench message {n}", "clientId": client_id,
                        }, timeout=10)
                    except Exception as exc:  # noqa: BLE001
                        ack = {"error": {"code": type(exc).__name__}}
                    if isinstance(ack, dict) and "error" in ack:
                        code = str(ack["error"].get("code"))
                        refused[code] = refused.get(code, 0) + 1
                        sent_at.pop(client_id, None)
                    else:
                        acks.append((time.monotonic() - t) * 1000)
                    n += 1
                    next_at += 1 / per_sender

            await asyncio.gather(*(send_loop(i, s) for i, s in enumerate(senders)))
            send_seconds = time.monotonic() - start
            expected = len(sent_at) * len(ready)
            drain_end = time.monotonic() + args.drain
            while len(deliveries) < expected and time.monotonic() < drain_end:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - start
            end_cpu = await probe.sample()
        finally:
            await asyncio.gather(*(s.close() for s in sockets))

    connect_times = [s.connect_ms for s in sockets if s.connect_ms is not None]
    cpu = None
    if start_cpu.cpu_seconds is not None and end_cpu.cpu_seconds is not None:
        cpu = (end_cpu.cpu_seconds - start_cpu.cpu_seconds) / elapsed * 100
    return {
        "script": "bench.signaling",
        "url": url,
        "room": room,
        "connections": args.connections,
        "connected": len(ready),
        "connect_failures": len(sockets) - len(ready),
        "connect_errors": [s.error for s in sockets if s.error][:5],
        "connect_rate_per_s": round(len(ready) / connect_seconds, 1),
        "connect_p50_ms": finite(percentile(connect_times, 50), 1),
        "connect_p99_ms": finite(percentile(connect_times, 99), 1),
        "senders": len(senders),
        "messages_sent": len(sent_at),
        "messages_refused": refused,
        "send_seconds": round(send_seconds, 2),
        "message_rate_per_s": round(len(sent_at) / send_seconds, 1),
        "deliveries": len(deliveries),
        "deliveries_expected": expected,
        "deliveries_missing": max(0, expected - len(deliveries)),
        "fanout_rate_per_s": round(len(deliveries) / send_seconds, 1),
        "delivery_p50_ms": finite(percentile(deliveries, 50), 1),
        "delivery_p99_ms": finite(percentile(deliveries, 99), 1),
        "ack_p50_ms": finite(percentile(acks, 50), 1),
        "ack_p99_ms": finite(percentile(acks, 99), 1),
        "server_cpu_pct": finite(cpu),
        "delivery_cdf_ms": [finite(percentile(deliveries, p), 1) for p in range(0, 101, 5)],
    }


COLUMNS = [
    ("connected", "sockets"), ("connect_rate_per_s", "conn/s"), ("connect_p50_ms", "conn p50"),
    ("connect_p99_ms", "conn p99"), ("message_rate_per_s", "msg/s"),
    ("fanout_rate_per_s", "deliveries/s"), ("delivery_p50_ms", "lat p50"),
    ("delivery_p99_ms", "lat p99"), ("ack_p99_ms", "ack p99"), ("deliveries_missing", "missing"),
    ("server_cpu_pct", "cpu%"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.signaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", help="token that creates the room (default: the first user's)")
    p.add_argument("--tokens-file", help="one user token per line")
    p.add_argument("--room", help="an existing live room (default: create one)")
    p.add_argument("--connections", type=int, default=100, help="sockets (default 100)")
    p.add_argument("--senders", type=int, default=10, help="sockets that send (default 10)")
    p.add_argument("--rate", type=float, default=20.0,
                   help="messages per second over all senders (default 20; the server allows "
                        "chat_rate, 5 by default, per user per room)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending (default 10)")
    p.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late deliveries")
    p.add_argument("--connect-concurrency", type=int, default=20)
    p.add_argument("--server-pid", type=int, help="server pid for CPU from /proc (else /metrics)")
    p.add_argument("--out", default="signaling.json")
    p.add_argument("--chart", help="PNG (default: --out with .png)")
    args = p.parse_args(argv)
    if args.connections < 1 or args.senders < 1 or args.rate <= 0:
        p.error("--connections, --senders and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, chart = run_script("signaling", args, run)
    cdf = result.pop("delivery_cdf_ms")
    drawn = chart_latency(chart, {"delivery": [(v, p) for p, v in zip(range(0, 101, 5), cdf, strict=True)
                                               if v is not None]},
                          "delivery latency (ms)", "percentile", "bench.signaling: chat delivery")
    print(format_table([result], COLUMNS))
    if result["messages_refused"]:
        print(f"refused: {result['messages_refused']}")
    print(f"JSON: {args.out}" + (f", chart: {chart}" if drawn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
