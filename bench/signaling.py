"""bench.signaling: Socket.IO sockets in one live room, connection set-up and chat fan-out,
stepped, with the load generator's own cost beside the server's.

Sockets are cheap raw Engine.IO clients (bench/signaling_worker.py) spread over
``--workers`` processes and over ``--sources`` loopback addresses (127.0.0.x), so
``airwave serve --workers N`` hands them to every worker. Each step
(``--steps SOCKETS:RATE,...``, e.g. ``1000:20,2000:20,10000:0``) first tops the room up to
SOCKETS sockets that ``stream:join`` it (connections/s, connect+join p50/p99, failures), then
measures ``--idle`` seconds of the server doing nothing but holding them (idle CPU, RSS per
socket), then ``--senders`` sockets send ``chat:send`` at RATE messages a second in all for
``--duration`` seconds; every socket of the room receives every ``chat:message``.
Per step: deliveries/s, delivery latency p50/p95/p99 (send to receipt; one machine clock),
missing deliveries after ``--drain`` seconds, server CPU (``/proc`` of ``--server-pid`` and
its children) and CPU microseconds per delivery, and the generator's CPU (its processes) and
event-loop lag. A step whose generator used more than ``--max-load-cpu`` percent of its cores
(``--load-cores``, default: the cores this process may run on) or whose loop lag p99 passed
``--max-lag-ms`` is marked NOT VALID, and stepping stops: its latencies would be the bench's.

    taskset -c 0 airwave serve ...           # the server on core 0, its pid as PID
    taskset -c 1 python -m bench.signaling --url http://127.0.0.1:8080 --server-pid PID \\
        --steps 1000:20,2000:20 --senders 20 --duration 15 --out signaling.json

The Node reference room (bench/node_reference/server.js) takes the same command.
Users: ``--tokens-file`` (one token per line), else the development sign-in
``POST /api/v1/dev/token``. ``--token`` creates the room (``POST /api/v1/rooms``)
unless ``--room`` names an existing live room.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from typing import Any

import aiohttp

from .load import (
    add_load_options,
    contended,
    generator_saturated,
    load_cores,
    load_cpu_seconds,
    load_wait_seconds,
    not_valid_reasons,
    worker_processes,
)
from .report import finite, format_table, percentile, run_script
from .server_probe import MEASURABLE_CPU_SECONDS, ServerProbe, tree_wait_seconds
from .user_tokens import user_tokens


def histogram_percentile(histogram: dict[int, int], p: float) -> float | None:
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, -(-p * total // 100))
    seen = 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= rank:
            return float(ms)
    return None


async def create_room(http: aiohttp.ClientSession, url: str, token: str) -> str:
    body = {"type": "live", "title": f"bench {uuid.uuid4().hex[:6]}", "public": True}
    async with http.post(f"{url}/api/v1/rooms", json=body,
                         headers={"Authorization": f"Bearer {token}"}) as r:
        data = await r.json()
        if r.status != 201:
            raise SystemExit(f"POST /api/v1/rooms: HTTP {r.status}: {data}")
        return data["id"]


def parse_steps(text: str) -> list[tuple[int, float]]:
    steps = []
    for part in text.split(","):
        sockets, _, rate = part.partition(":")
        steps.append((int(sockets), float(rate or 0)))
    if not steps or any(s < 1 or r < 0 for s, r in steps):
        raise ValueError("steps are SOCKETS:RATE with SOCKETS >= 1 and RATE >= 0")
    return steps


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.url.rstrip("/")
    steps = parse_steps(args.steps)
    cores = load_cores(args)
    sources = [s for s in args.sources.split(",") if s]
    results: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        probe = ServerProbe(http, url, args.server_pid)
        most = max(s for s, _ in steps)
        users = await user_tokens(http, url, most, tokens_file=args.tokens_file,
                                  prefix=f"bench-sig-{uuid.uuid4().hex[:4]}-")
        room = args.room or await create_room(http, url, args.token or users[0].token)
        config = {"url": url, "room": room, "sources": sources,
                  "lifetime": args.lifetime, "caps": [c for c in args.caps.split(",") if c]}
        baseline = await probe.sample()
        async with worker_processes("signaling_worker", args.workers, config) as workers:
            connected = 0
            for index, (target, rate) in enumerate(steps):
                step: dict[str, Any] = {"step": index, "sockets_asked": target, "rate_asked": rate}
                results.append(step)
                # ---- connections
                new = users[connected:target]
                shares = [new[i::len(workers)] for i in range(len(workers))]
                before = await probe.sample()
                t0, load_before = time.monotonic(), load_cpu_seconds(workers)
                replies = await asyncio.gather(*(
                    w.request({"op": "connect", "tokens": [u.token for u in share],
                               "concurrency": args.connect_concurrency}, 60 + len(share))
                    for w, share in zip(workers, shares, strict=True)))
                connect_seconds = time.monotonic() - t0
                connect_load_pct = (load_cpu_seconds(workers) - load_before) / connect_seconds * 100
                after = await probe.sample()
                connect_server_cpu = (None if after.cpu_seconds is None or before.cpu_seconds is None
                                      else after.cpu_seconds - before.cpu_seconds)
                if connect_server_cpu is not None and connect_server_cpu < MEASURABLE_CPU_SECONDS:
                    connect_server_cpu = None  # a few ticks: no figure rather than 0 or 2x the truth
                ok = sum(r["ok"] for r in replies)
                connect_ms = [t for r in replies for t in r["connect_ms"]]
                connected += ok
                step.update({
                    "sockets": connected, "new_sockets": len(new), "connect_failures": len(new) - ok,
                    "connect_errors": [e for r in replies for e in r["errors"]][:5],
                    "connect_rate_per_s": round(ok / connect_seconds, 1) if connect_seconds else None,
                    "connect_p50_ms": finite(percentile(connect_ms, 50), 1),
                    "connect_p99_ms": finite(percentile(connect_ms, 99), 1),
                    # server CPU per connect + stream:join: what a connection costs, whatever
                    # else the machine was doing
                    "connect_server_cpu_ms": finite(
                        connect_server_cpu * 1000 / ok if ok and connect_server_cpu is not None
                        else None, 2),
                    # which side held the rate back: a connection rate is the server's only
                    # while the generator has CPU to spare
                    "connect_server_cpu_pct": finite(
                        connect_server_cpu / connect_seconds * 100
                        if connect_server_cpu is not None and connect_seconds else None, 1),
                    "connect_load_cpu_pct_of_cores": round(connect_load_pct / cores, 1),
                })
                saturated = generator_saturated(args, connect_load_pct)
                if saturated:
                    step["connect_rate_bound_by"] = (
                        f"the generator ({saturated}): the server's rate is at least this")
                # ---- idle
                await asyncio.sleep(1.0)
                idle_start = await probe.sample()
                await asyncio.sleep(args.idle)
                idle_end = await probe.sample()
                if idle_start.cpu_seconds is not None and idle_end.cpu_seconds is not None:
                    step["idle_cpu_pct"] = finite(
                        (idle_end.cpu_seconds - idle_start.cpu_seconds)
                        / (idle_end.at - idle_start.at) * 100, 1)
                if idle_end.rss_bytes is not None and baseline.rss_bytes is not None and connected:
                    step["server_rss_mb"] = round(idle_end.rss_bytes / 2**20, 1)
                    step["rss_kb_per_socket"] = finite(
                        (idle_end.rss_bytes - baseline.rss_bytes) / 1024 / connected, 1)
                # ---- fan-out
                valid = True
                if rate > 0:
                    senders = min(args.senders, connected)
                    per_worker = [senders // len(workers) + (1 if i < senders % len(workers) else 0)
                                  for i in range(len(workers))]
                    start_at = time.monotonic() + 0.5
                    cpu0, load0 = await probe.sample(), load_cpu_seconds(workers)
                    waits0 = (tree_wait_seconds(args.server_pid) if args.server_pid else None,
                              load_wait_seconds(workers))
                    await asyncio.gather(*(
                        w.request({"op": "send", "step": index, "senders": n,
                                   "rate": rate * n / senders, "start_at": start_at,
                                   "duration": args.duration}, 30)
                        for w, n in zip(workers, per_worker, strict=True)))
                    sent_replies = await asyncio.gather(*(
                        w.request({"op": "sent"}, args.duration + 60) for w in workers))
                    send_seconds = time.monotonic() - start_at
                    sent = sum(r["sent"] for r in sent_replies)
                    refused: dict[str, int] = {}
                    for r in sent_replies:
                        for code, n in r["refused"].items():
                            refused[code] = refused.get(code, 0) + n
                    acked = sent - sum(refused.values())
                    expected = acked * connected
                    drain_end = time.monotonic() + args.drain
                    while True:
                        snaps = await asyncio.gather(*(w.request({"op": "snapshot"}, 30)
                                                       for w in workers))
                        received = sum(s["received"] for s in snaps)
                        if received >= expected or time.monotonic() >= drain_end:
                            break
                        await asyncio.sleep(0.25)
                    cpu1, load1 = await probe.sample(), load_cpu_seconds(workers)
                    elapsed = cpu1.at - cpu0.at
                    server_wait = (None if waits0[0] is None else
                                   (tree_wait_seconds(args.server_pid) - waits0[0]) / elapsed * 100)
                    load_wait = (load_wait_seconds(workers) - waits0[1]) / elapsed * 100
                    histogram: dict[int, int] = {}
                    for s in snaps:
                        for ms, n in s["histogram"].items():
                            histogram[int(ms)] = histogram.get(int(ms), 0) + n
                    server_cpu = (None if cpu0.cpu_seconds is None or cpu1.cpu_seconds is None
                                  else cpu1.cpu_seconds - cpu0.cpu_seconds)
                    load_pct = (load1 - load0) / elapsed * 100
                    lag_p99 = max(s["lag_p99_ms"] for s in snaps)
                    acks = [a for r in sent_replies for a in r["ack_ms"]]
                    step.update({
                        "senders": senders, "messages_sent": sent, "messages_refused": refused,
                        "message_rate_per_s": round(acked / send_seconds, 1),
                        "deliveries": received, "deliveries_expected": expected,
                        "deliveries_missing": max(0, expected - received),
                        "deliveries_per_s": round(received / send_seconds, 1),
                        "delivery_p50_ms": histogram_percentile(histogram, 50),
                        "delivery_p95_ms": histogram_percentile(histogram, 95),
                        "delivery_p99_ms": histogram_percentile(histogram, 99),
                        "ack_p50_ms": finite(percentile(acks, 50), 1),
                        "ack_p99_ms": finite(percentile(acks, 99), 1),
                        "server_cpu_pct": finite(server_cpu / elapsed * 100 if server_cpu else None, 1),
                        "server_us_per_delivery": finite(
                            server_cpu / received * 1e6 if server_cpu and received else None, 1),
                        "load_cpu_pct": round(load_pct, 1),
                        "load_cpu_pct_of_cores": round(load_pct / cores, 1),
                        "load_lag_p99_ms": lag_p99,
                        "load_lag_max_ms": max(s["lag_max_ms"] for s in snaps),
                        "disconnected": sum(s["disconnected"] for s in snaps),
                        # waiting for a CPU that another process held (/proc/<pid>/schedstat):
                        # on a shared machine, time the server or the bench lost to others
                        "server_cpu_wait_pct": finite(server_wait, 1),
                        "load_cpu_wait_pct": round(load_wait, 1),
                    })
                    note = contended(args, server_wait)
                    if note:
                        step["contended"] = note
                    reasons = not_valid_reasons(args, load_pct, lag_p99)
                    if reasons:
                        valid = False
                        step["not_valid"] = "; ".join(reasons)
                step["valid"] = valid
                print(format_table([step], COLUMNS), file=sys.stderr, flush=True)
                if not valid:
                    print(f"step {index} NOT VALID: {step['not_valid']}; stepping stops",
                          file=sys.stderr, flush=True)
                    break
    return {"script": "bench.signaling", "url": url, "room": room, "workers": args.workers,
            "caps": args.caps,
            "sources": sources, "load_cores": cores, "loadavg": os.getloadavg(),
            "steps": results}


COLUMNS = [
    ("sockets", "sockets"), ("connect_rate_per_s", "conn/s"), ("connect_p50_ms", "conn p50"),
    ("connect_p99_ms", "conn p99"), ("connect_server_cpu_ms", "conn srv ms"),
    ("connect_server_cpu_pct", "conn srv%"), ("connect_load_cpu_pct_of_cores", "conn load%"),
    ("connect_failures", "conn fail"),
    ("idle_cpu_pct", "idle cpu%"), ("rss_kb_per_socket", "KB/sock"),
    ("message_rate_per_s", "msg/s"), ("deliveries_per_s", "deliv/s"),
    ("delivery_p50_ms", "p50"), ("delivery_p95_ms", "p95"), ("delivery_p99_ms", "p99"),
    ("deliveries_missing", "missing"), ("server_cpu_pct", "srv cpu%"),
    ("server_us_per_delivery", "srv us/deliv"), ("load_cpu_pct_of_cores", "load cpu%"),
    ("load_lag_p99_ms", "load lag p99"), ("server_cpu_wait_pct", "srv wait%"),
    ("load_cpu_wait_pct", "load wait%"), ("valid", "valid"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.signaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", help="token that creates the room (default: the first user's)")
    p.add_argument("--tokens-file", help="one user token per line")
    p.add_argument("--room", help="an existing live room (default: create one)")
    p.add_argument("--steps", default="200:20",
                   help="SOCKETS:RATE,... sockets in the room and chat messages a second in all "
                        "(RATE 0: connections and idle cost only); default 200:20")
    p.add_argument("--senders", type=int, default=20, help="sockets that send (default 20; the "
                   "server allows chat_rate, 5 by default, per user per room)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending per step")
    p.add_argument("--idle", type=float, default=3.0, help="seconds of idle measurement per step")
    p.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late deliveries")
    p.add_argument("--workers", type=int, default=4, help="socket worker processes (default 4)")
    p.add_argument("--sources", default="127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4",
                   help="loopback source addresses the sockets spread over")
    p.add_argument("--caps", default="",
                   help="capabilities the sockets announce on connect, e.g. batch (a large room "
                        "then coalesces chat into batch events, counted message by message)")
    p.add_argument("--connect-concurrency", type=int, default=25, help="per worker")
    p.add_argument("--server-pid", type=int, help="server pid for CPU from /proc (else /metrics)")
    add_load_options(p)
    p.add_argument("--lifetime", type=float, default=900, help="workers exit after this (s)")
    p.add_argument("--out", default="signaling.json")
    p.add_argument("--chart", help="unused; kept for the common bench options")
    args = p.parse_args(argv)
    try:
        parse_steps(args.steps)
    except ValueError as exc:
        p.error(str(exc))
    if args.senders < 1 or args.workers < 1:
        p.error("--senders and --workers must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, _ = run_script("signaling", args, run)
    print(format_table(result["steps"], COLUMNS))
    for step in result["steps"]:
        if step.get("messages_refused"):
            print(f"step {step['step']} refused: {step['messages_refused']}")
        if not step["valid"]:
            print(f"step {step['step']} NOT VALID: {step['not_valid']}")
        if step.get("connect_rate_bound_by"):
            print(f"step {step['step']} connection rate bound by {step['connect_rate_bound_by']}")
        if step.get("contended"):
            print(f"step {step['step']} contended: {step['contended']}")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
