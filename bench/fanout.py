"""bench.fanout: how many viewers of one 720p stream a server can feed, and
how much server CPU each forwarded packet costs.

One publisher sends a pre-encoded 1280x720 30 fps VP8 stream (about
1.5 Mbit/s) and Opus over WHIP; viewers join over WHEP from several worker
processes, in steps (``--viewers 1,10,25,...``). Viewers count RTP at the
socket without decrypting (see bench/whep_viewer.py). At each step, after the
joins and a settling pause, the script measures for ``--duration`` seconds:
delivered packets per second, server CPU (``/proc/<--server-pid>`` or
``process_cpu_seconds_total`` on /metrics), server CPU microseconds per
delivered packet, loss from sequence gaps, server RSS, and the join times of
the step's new viewers (POST to first video packet, POST to first keyframe).
It stops at the first step whose loss passes ``--max-loss`` or whose
join-to-keyframe p95 passes ``--max-join-p95``; the last good step is the
capacity. ``--reference`` then measures a naive relay (bench/reference_relay.py:
aiortc MediaRelay, decode and re-encode per viewer) with the same viewers.

``--simulcast`` publishes three VP8 layers instead (180, 360 and 720 lines,
bench/simulcast_publisher.py) and ``--low-share F --low-kbps K`` makes that
share of the viewers report (by REMB) a downlink of K kbit/s; each step then
also reports the layer mix (viewers per layer, from each viewer's video
bit rate without padding: paused, q, h, f) and layer switches per viewer per
minute (the server's ``airwave_sfu_layer_switches_total``).

    python -m bench.fanout --url http://127.0.0.1:8080 --token TOKEN \\
        --server-pid PID --viewers 1,10,50,100,150,200 --out fanout.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .client_ice import use_host_addresses
from .load import WorkerProcess, load_cpu_seconds, worker_processes
from .media_clip import VideoSpec, audio_clip, bitrate, video_clip
from .report import chart_fanout, finite, format_table, percentile, write_json
from .server_probe import ServerProbe, ServerSample
from .simulcast_publisher import SimulcastWhipPublisher
from .whip_publisher import LoopedClipTrack, WhipPublisher

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [
    ("viewers", "viewers"),
    ("delivered_pps", "pkt/s"),
    ("delivered_mbps", "Mbit/s"),
    ("server_cpu_pct", "cpu%"),
    ("server_cpu_us_per_packet", "us/pkt"),
    ("cpu_pct_per_viewer", "cpu%/viewer"),
    ("loss_pct", "loss%"),
    ("dtls_p95_ms", "dtls p95"),
    ("first_packet_p95_ms", "1st pkt p95"),
    ("join_p50_ms", "kf p50"),
    ("join_p95_ms", "kf p95"),
    ("connected_kf_p95_ms", "conn->kf p95"),
    ("join_failures", "failed"),
    ("server_rss_mb", "rss MB"),
    ("load_cpu_pct", "load cpu%"),
]
SIMULCAST_COLUMNS = [("layer_mix", "p/q/h/f"), ("switches_per_viewer_min", "sw/min")]


# ------------------------------------------------------------------ worker processes


def viewer_workers(
    count: int, url: str, token: str | None, ice_addresses: list[str], lifetime: float
) -> contextlib.AbstractAsyncContextManager[list[WorkerProcess]]:
    return worker_processes("viewer_worker", count, {
        "url": url, "token": token, "ice_addresses": ice_addresses, "lifetime": lifetime})


# ------------------------------------------------------------------------- stepping


@dataclass
class Target:
    label: str
    url: str
    room: str
    token: str | None
    server_pid: int | None


@dataclass
class Snapshot:
    server: ServerSample
    viewers: list[dict[str, Any]]
    load_cpu: float
    at: float


def _sum(snapshots: list[dict[str, Any]], key: str) -> int:
    return sum(s[key] for s in snapshots)


async def _snapshot(probe: ServerProbe, workers: list[WorkerProcess]) -> Snapshot:
    viewers = await asyncio.gather(*(w.request({"op": "snapshot"}, 30) for w in workers))
    server = await probe.sample()
    return Snapshot(server, list(viewers), load_cpu_seconds(workers), time.monotonic())


def _layer_mix(a: Snapshot, b: Snapshot, layer_bps: list[float]) -> list[int]:
    """Viewers per layer over the window, from their video bit rates: [paused, low, ..., top]."""
    mix = [0] * (len(layer_bps) + 1)
    elapsed = b.at - a.at
    for wa, wb in zip(a.viewers, b.viewers, strict=True):
        for before, after in zip(wa["video_bytes_each"], wb["video_bytes_each"], strict=False):
            if before < 0 or after < 0:
                continue
            rate = (after - before) * 8 / elapsed
            if rate < layer_bps[0] / 2:
                mix[0] += 1
            else:
                nearest = min(range(len(layer_bps)), key=lambda i: abs(math.log(rate / layer_bps[i])))
                mix[nearest + 1] += 1
    return mix


def _step_result(
    viewers: int, step: int, a: Snapshot, b: Snapshot, rss_baseline: int | None,
    joined: dict[str, Any], layer_bps: list[float] | None = None,
) -> dict[str, Any]:
    elapsed = b.at - a.at
    packets = (_sum(b.viewers, "video_packets") + _sum(b.viewers, "audio_packets")
               - _sum(a.viewers, "video_packets") - _sum(a.viewers, "audio_packets"))
    octets = (_sum(b.viewers, "video_bytes") + _sum(b.viewers, "audio_bytes")
              - _sum(a.viewers, "video_bytes") - _sum(a.viewers, "audio_bytes"))
    expected = _sum(b.viewers, "expected") - _sum(a.viewers, "expected")
    lost = _sum(b.viewers, "lost") - _sum(a.viewers, "lost")
    cpu = None
    if a.server.cpu_seconds is not None and b.server.cpu_seconds is not None:
        cpu = b.server.cpu_seconds - a.server.cpu_seconds
    cpu_pct = cpu / elapsed * 100 if cpu is not None else None
    forwarded = None
    if a.server.forwarded_packets is not None and b.server.forwarded_packets is not None:
        forwarded = (b.server.forwarded_packets - a.server.forwarded_packets) / elapsed
    rss = b.server.rss_bytes
    joins = [j for w in b.viewers for j in w["joins"] if j[0] == step]
    keyframe = [j[4] if j[1] and j[4] is not None else math.inf for j in joins]
    first = [j[3] if j[1] and j[3] is not None else math.inf for j in joins]
    failures = sum(1 for j in joins if not j[1] or j[4] is None)
    ice = [j[5] if j[1] and j[5] is not None else math.inf for j in joins]
    dtls = [j[6] if j[1] and j[6] is not None else math.inf for j in joins]
    # ICE+DTLS connected -> first keyframe packet (what a GOP cache shortens)
    connected_kf = [
        j[4] - j[6] if j[1] and j[4] is not None and j[6] is not None else math.inf for j in joins
    ]
    simulcast: dict[str, Any] = {}
    if layer_bps:
        mix = _layer_mix(a, b, layer_bps)
        switches = None
        if a.server.layer_switches is not None and b.server.layer_switches is not None:
            switches = (b.server.layer_switches - a.server.layer_switches) / max(1, viewers)
        simulcast = {
            "layers": dict(zip(["paused", "q", "h", "f"][: len(mix)], mix, strict=True)),
            "layer_mix": "/".join(str(n) for n in mix),
            "switches_per_viewer_min": finite(switches * 60 / elapsed if switches is not None else None, 2),
        }
    return {
        **simulcast,
        "viewers": viewers,
        "connected_viewers": _sum(b.viewers, "viewers"),
        "seconds": round(elapsed, 2),
        "delivered_pps": round(packets / elapsed, 1),
        "delivered_mbps": round(octets * 8 / elapsed / 1e6, 2),
        "server_forwarded_pps": finite(forwarded, 1),
        "server_cpu_pct": finite(cpu_pct),
        "server_cpu_us_per_packet": finite(cpu * 1e6 / packets if cpu and packets else None),
        "cpu_pct_per_viewer": finite(cpu_pct / viewers if cpu_pct is not None and viewers else None, 3),
        "loss_pct": round(lost / expected * 100, 3) if expected else None,
        "join_p50_ms": finite(percentile(keyframe, 50), 1),
        "join_p95_ms": finite(percentile(keyframe, 95), 1),
        "first_packet_p50_ms": finite(percentile(first, 50), 1),
        "first_packet_p95_ms": finite(percentile(first, 95), 1),
        "ice_p50_ms": finite(percentile(ice, 50), 1),
        "ice_p95_ms": finite(percentile(ice, 95), 1),
        "dtls_p50_ms": finite(percentile(dtls, 50), 1),
        "dtls_p95_ms": finite(percentile(dtls, 95), 1),
        "connected_kf_p50_ms": finite(percentile(connected_kf, 50), 1),
        "connected_kf_p95_ms": finite(percentile(connected_kf, 95), 1),
        "join_failures": failures,
        "join_keyframe_ms": sorted(round(v) if v != math.inf else -1 for v in keyframe),
        "join_errors": joined.get("errors", []),
        "server_rss_mb": round(rss / 2**20, 1) if rss is not None else None,
        "server_rss_mb_per_viewer": (
            round((rss - rss_baseline) / 2**20 / viewers, 3)
            if rss is not None and rss_baseline is not None and viewers else None
        ),
        "load_cpu_pct": round((b.load_cpu - a.load_cpu) / elapsed * 100, 1),
    }


def _good(step: dict[str, Any], max_loss: float, max_join_p95: float) -> bool:
    loss = step["loss_pct"]
    p95 = step["join_p95_ms"]
    return (
        step["join_failures"] == 0
        and step["delivered_pps"] > 0
        and loss is not None and loss <= max_loss
        and p95 is not None and p95 <= max_join_p95
    )


async def run_steps(
    target: Target, counts: list[int], args: argparse.Namespace, http: aiohttp.ClientSession,
    *, simulcast: bool = False,
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """Publish, then step viewers up; returns (steps, capacity, publisher info)."""
    spec = VideoSpec()
    video = video_clip(spec)
    audio = audio_clip()
    publisher: WhipPublisher | SimulcastWhipPublisher
    layer_bps: list[float] | None = None
    if simulcast:
        publisher = SimulcastWhipPublisher(audio)
        layer_bps = [bitrate(layer.frames, s.fps) for layer, s in
                     zip(publisher.layers, publisher.specs, strict=True)]
    else:
        publisher = WhipPublisher([
            LoopedClipTrack("video", video, fps=spec.fps),
            LoopedClipTrack("audio", audio, fps=50),
        ])
    columns = COLUMNS + (SIMULCAST_COLUMNS if simulcast else [])
    probe = ServerProbe(http, target.url, target.server_pid)
    steps: list[dict[str, Any]] = []
    capacity = 0
    deadline = time.monotonic() + args.max_time
    started = False
    try:
        await publisher.start(http, f"{target.url}/whip/{target.room}", target.token)
        started = True
        async with asyncio.timeout(15):
            await publisher.connected.wait()
        await asyncio.sleep(2)
        baseline = await probe.sample()
        whep = f"{target.url}/whep/{target.room}"
        lifetime = args.max_time + 120
        async with viewer_workers(args.workers, whep, target.token, args.ice_address,
                                  lifetime) as workers:
            current = 0
            for step, count in enumerate(counts):
                if time.monotonic() > deadline:
                    print(f"[{target.label}] --max-time reached; stopping", file=sys.stderr)
                    break
                add = count - current
                shares = [add // len(workers) + (1 if i < add % len(workers) else 0)
                          for i in range(len(workers))]
                rate = args.join_rate / len(workers)
                join_timeout = (30 + 2 * max(shares) / max(1, args.join_concurrency) * 15
                                + (max(shares) / rate if rate > 0 else 0))
                replies = await asyncio.gather(*(
                    w.request({"op": "join", "count": n, "concurrency": args.join_concurrency,
                               "rate": rate, "step": step, "low_share": args.low_share,
                               "low_bps": args.low_kbps * 1000}, join_timeout)
                    for w, n in zip(workers, shares, strict=True) if n > 0
                ))
                current = count
                joined = {"errors": [e for r in replies for e in r["errors"]][:5]}
                await asyncio.sleep(args.settle)
                a = await _snapshot(probe, workers)
                await asyncio.sleep(args.duration)
                b = await _snapshot(probe, workers)
                result = _step_result(count, step, a, b, baseline.rss_bytes, joined, layer_bps)
                steps.append(result)
                good = _good(result, args.max_loss, args.max_join_p95)
                print(f"[{target.label}] " + format_table([result], columns).splitlines()[-1]
                      + ("" if good else "   <- past the limit"), file=sys.stderr, flush=True)
                if not good:
                    break
                capacity = count
    finally:
        if started:
            await publisher.stop(http, target.token)
        else:
            await publisher.pc.close()
    info: dict[str, Any] = {
        "video": f"VP8 {spec.width}x{spec.height} {spec.fps} fps",
        "video_kbps": round(bitrate(video, spec.fps) / 1000),
        "audio_kbps": round(bitrate(audio, 50) / 1000),
    }
    if isinstance(publisher, SimulcastWhipPublisher):
        info["video"] = "VP8 simulcast 320x180, 640x360, 1280x720 30 fps"
        info["layers_kbps"] = [round(b / 1000) for b in layer_bps or []]
        info["keyframe_requests"] = publisher.keyframe_requests
    else:
        info["keyframe_requests"] = publisher.tracks[0].keyframe_requests
    return steps, capacity, info


# ------------------------------------------------------------------------ reference


@contextlib.asynccontextmanager
async def reference_relay(args: argparse.Namespace) -> AsyncIterator[tuple[str, int]]:
    """Start bench.reference_relay (pinned with taskset when --reference-cpus);
    yield (url, pid)."""
    command = [sys.executable, "-m", "bench.reference_relay", "--host", "127.0.0.1",
               "--port", "0", "--ice-address", ",".join(args.ice_address),
               "--lifetime", str(args.max_time + 120)]
    if args.reference_cpus:
        taskset = shutil.which("taskset")
        if taskset is None:
            raise SystemExit("--reference-cpus needs taskset")
        command = [taskset, "-c", args.reference_cpus, *command]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, cwd=str(PACKAGE_ROOT), env=env
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode().strip()
        if not line.startswith("listening "):
            raise RuntimeError(f"reference relay did not start: {line!r}")
        yield line.split()[1], process.pid
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


def _per_viewer(steps: list[dict[str, Any]], capacity: int) -> float | None:
    """Server CPU % per viewer at the last good step that still delivered each
    viewer at least 90% of the packets one viewer got (a saturated relay that
    degrades its stream looks cheaper per viewer than it is); else the first step."""
    if not steps:
        return None
    full = steps[0]["delivered_pps"] / max(1, steps[0]["viewers"])
    chosen = [
        s for s in steps
        if s["viewers"] <= capacity and s["delivered_pps"] / s["viewers"] >= 0.9 * full
    ] or steps[:1]
    return chosen[-1]["cpu_pct_per_viewer"]


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", help="a token with publish and subscribe grants for --room")
    p.add_argument("--room", default="bench", help="room to publish into (default bench)")
    p.add_argument("--viewers", default="1,10,25,50,100,150,200,250,300",
                   help="viewer counts to step through (default 1,10,25,50,100,150,200,250,300)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds measured at each step (default 10)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between the joins and the measurement (default 2)")
    p.add_argument("--workers", type=int, default=2, help="viewer worker processes (default 2)")
    p.add_argument("--join-concurrency", type=int, default=10,
                   help="joins in flight per worker (default 10)")
    p.add_argument("--join-rate", type=float, default=25.0,
                   help="new viewers per second at each step, over all workers; 0 = all at once "
                        "(default 25)")
    p.add_argument("--server-pid", type=int,
                   help="server process id (this machine): CPU and RSS from /proc; "
                        "otherwise from /metrics")
    p.add_argument("--ice-address", default="127.0.0.1",
                   help="local address(es) the bench's WebRTC clients gather, comma-separated")
    p.add_argument("--max-loss", type=float, default=1.0, help="loss %% that ends stepping (default 1)")
    p.add_argument("--max-join-p95", type=float, default=2000.0,
                   help="join-to-keyframe p95 in ms that ends stepping (default 2000)")
    p.add_argument("--max-time", type=float, default=900.0,
                   help="hard limit on the whole run in seconds (default 900)")
    p.add_argument("--simulcast", action="store_true",
                   help="publish three VP8 layers (180/360/720 lines) instead of one")
    p.add_argument("--low-share", type=float, default=0.0,
                   help="share of the viewers (0..1) that report a low downlink by REMB (default 0)")
    p.add_argument("--low-kbps", type=int, default=300,
                   help="the downlink those viewers report, kbit/s (default 300)")
    p.add_argument("--reference", action="store_true",
                   help="also measure the naive relay (bench/reference_relay.py)")
    p.add_argument("--reference-viewers", default="1,2,4",
                   help="viewer counts for the reference (default 1,2,4)")
    p.add_argument("--reference-cpus",
                   help="taskset CPU list for the reference relay (e.g. 0, the server's core)")
    p.add_argument("--out", default="fanout.json", help="JSON output (default fanout.json)")
    p.add_argument("--chart", help="PNG chart (default: --out with .png)")
    args = p.parse_args(argv)
    args.ice_address = [a.strip() for a in args.ice_address.split(",") if a.strip()]
    args.counts = sorted({int(v) for v in args.viewers.split(",") if v.strip()})
    args.reference_counts = sorted({int(v) for v in args.reference_viewers.split(",") if v.strip()})
    if not args.counts or args.counts[0] < 1:
        p.error("--viewers needs positive counts")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if not 0 <= args.low_share <= 1 or args.low_kbps < 1:
        p.error("--low-share must be 0..1 and --low-kbps positive")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    use_host_addresses(args.ice_address)
    url = args.url.rstrip("/")
    result: dict[str, Any] = {
        "script": "bench.fanout",
        "url": url,
        "started_at": time.time(),
        "settings": {k: getattr(args, k) for k in (
            "room", "duration", "settle", "workers", "join_concurrency", "join_rate", "max_loss",
            "max_join_p95", "ice_address", "simulcast", "low_share", "low_kbps")},
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        target = Target("airwave", url, args.room, args.token, args.server_pid)
        steps, capacity, publisher = await run_steps(
            target, args.counts, args, http, simulcast=args.simulcast
        )
        result.update(publisher=publisher, steps=steps, capacity_viewers=capacity)
        result["cpu_pct_per_viewer"] = _per_viewer(steps, capacity)
        if args.reference:
            async with reference_relay(args) as (ref_url, ref_pid):
                ref = Target("reference", ref_url, "reference", None, ref_pid)
                ref_steps, ref_capacity, _ = await run_steps(ref, args.reference_counts, args, http)
            per_viewer = _per_viewer(ref_steps, ref_capacity)
            result["reference"] = {
                "kind": "aiortc MediaRelay, decode once and encode per viewer",
                "steps": ref_steps,
                "capacity_viewers": ref_capacity,
                "cpu_pct_per_viewer": per_viewer,
            }
            ours = result["cpu_pct_per_viewer"]
            result["reference_cpu_ratio"] = (
                round(per_viewer / ours, 1) if per_viewer and ours else None
            )
    result["finished_at"] = time.time()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    result = uvloop.run(run(args))
    write_json(args.out, result)
    chart = args.chart or str(Path(args.out).with_suffix(".png"))
    drawn = chart_fanout(chart, result["steps"], (result.get("reference") or {}).get("steps"),
                         title=f"bench.fanout {result['publisher']['video']}")
    print(format_table(result["steps"], COLUMNS + (SIMULCAST_COLUMNS if args.simulcast else [])))
    print(f"capacity: {result['capacity_viewers']} viewers "
          f"(loss <= {args.max_loss}%, keyframe p95 <= {args.max_join_p95:.0f} ms)")
    if "reference" in result:
        print("\nreference (naive relay):")
        print(format_table(result["reference"]["steps"], COLUMNS))
        print(f"CPU per viewer: reference {result['reference']['cpu_pct_per_viewer']}% vs "
              f"airwave {result['cpu_pct_per_viewer']}% -> ratio {result['reference_cpu_ratio']}")
    print(f"JSON: {args.out}" + (f", chart: {chart}" if drawn else " (no chart: matplotlib missing)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
