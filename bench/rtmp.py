"""bench.rtmp: server CPU per RTMP publisher, with and without audio.

RTMP ingest passes H.264 through (FLV to RTP, no decoding) and transcodes AAC
to Opus, so the audio dominates a publisher's cost. This script starts N
publisher processes at once (``--publishers 1,2,4,8``), each FFmpeg (PyAV's
flv muxer) pushing a clip encoded once (``--clip``) in a loop at real-time
pace into its own room: 640x360 H.264 Main 30 fps (keyframe every second, no B-frames) and, in
mode ``av``, AAC-LC 48 kHz stereo at 128 kbit/s. After ``--settle`` seconds it
measures the server's CPU (``/proc/<--server-pid>`` and its children) and
the RTP packets its publishers received (``/metrics``) for ``--duration``
seconds; mode ``v`` (video only) isolates the transcode.
Publishers that fail (refused, disconnected) are counted.

    python -m bench.rtmp --rtmp rtmp://127.0.0.1:1935/live --url http://127.0.0.1:8080 \\
        --token TOKEN --server-pid PID --publishers 1,2,4,8 --modes av,v --out rtmp.json

TOKEN must grant publish for every room (``airwave token --room '*' --publish``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from typing import Any

import aiohttp
import av

from .server_probe import ServerProbe

FPS = 30
CLIP_SECONDS = 2
WIDTH, HEIGHT = 640, 360
AAC_RATE = 48000
AAC_FRAME = 1024


def make_clip(path: str) -> None:
    """The clip every publisher loops, encoded once: FLV, H.264 Main and AAC."""
    out = av.open(path, "w", format="flv")
    video = out.add_stream("libx264", rate=FPS)
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    video.bit_rate = 1_000_000
    video.options = {"profile": "main", "preset": "veryfast", "tune": "zerolatency",
                     "bf": "0", "g": str(FPS), "x264-params": "bframes=0"}
    sound = out.add_stream("aac", rate=AAC_RATE)
    sound.layout = "stereo"
    sound.bit_rate = 128_000
    tone = b"".join(
        int(6000 * math.sin(2 * math.pi * 10 * i / AAC_FRAME)).to_bytes(2, "little", signed=True) * 2
        for i in range(AAC_FRAME)
    )
    noise = bytes((i * 7919) & 0xFF for i in range(WIDTH * HEIGHT))
    audio_frames = 0
    for n in range(FPS * CLIP_SECONDS):
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        for p, plane in enumerate(frame.planes):
            if p == 0:
                shift = (n * 997) % len(noise)
                plane.update((noise[shift:] + noise[:shift])[: plane.buffer_size])
            else:
                plane.update(bytes([(n * 3 + p * 50) & 0xFF]) * plane.buffer_size)
        frame.pts = n
        for packet in video.encode(frame):
            out.mux(packet)
        while audio_frames * AAC_FRAME < (n + 1) * AAC_RATE // FPS:
            pcm = av.AudioFrame(format="s16", layout="stereo", samples=AAC_FRAME)
            pcm.planes[0].update(tone)
            pcm.sample_rate = AAC_RATE
            pcm.pts = audio_frames * AAC_FRAME
            for packet in sound.encode(pcm):
                out.mux(packet)
            audio_frames += 1
    for stream in (video, sound):
        for packet in stream.encode(None):
            out.mux(packet)
    out.close()


def publish(url: str, seconds: float, audio: bool, clip_path: str) -> int:
    """One publisher (run in its own process): remux the clip in a loop at real-time pace."""
    clip = av.open(clip_path)
    kinds = ("video", "audio") if audio else ("video",)
    sources = [s for s in clip.streams if s.type in kinds]
    out = av.open(url, "w", format="flv")
    targets = {s.index: out.add_stream_from_template(s) for s in sources}
    packets = [(targets[p.stream.index], p) for p in clip.demux(*sources) if p.size]
    clip.close()
    length = max(float(((p.pts or 0) + (p.duration or 0)) * p.time_base) for _, p in packets)
    start = time.monotonic()
    loop = 0
    while time.monotonic() - start < seconds:
        for target, template in packets:
            base = template.time_base
            offset = math.ceil(loop * length / base)
            packet = av.Packet(bytes(template))
            packet.pts = (template.pts or 0) + offset
            packet.dts = (template.dts if template.dts is not None else template.pts or 0) + offset
            packet.time_base = base
            packet.is_keyframe = template.is_keyframe
            packet.stream = target
            delay = start + float((packet.pts or 0) * base) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            out.mux(packet)
        loop += 1
    out.close()
    return 0


async def step(args: argparse.Namespace, count: int, mode: str) -> dict[str, Any]:
    seconds = args.settle + args.duration + 2
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.rtmp", "--publish",
            f"{args.rtmp.rstrip('/')}/bench-{mode}-{count}-{i}?key={args.token}", str(seconds),
            "1" if mode == "av" else "0", args.clip,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        for i in range(count)
    ]
    await asyncio.sleep(args.settle)
    async with aiohttp.ClientSession() as http:
        probe = ServerProbe(http, args.url, args.server_pid)
        a = await probe.sample()
        received_a = (await probe.metrics()).get("airwave_sfu_received_packets_total", 0.0)
        await asyncio.sleep(args.duration)
        b = await probe.sample()
        received_b = (await probe.metrics()).get("airwave_sfu_received_packets_total", 0.0)
    elapsed = b.at - a.at
    assert a.cpu_seconds is not None and b.cpu_seconds is not None
    failed = 0
    for proc in procs:
        _, err = await proc.communicate()
        if proc.returncode != 0:
            failed += 1
            print(err.decode()[-500:], file=sys.stderr)
    cpu_pct = (b.cpu_seconds - a.cpu_seconds) / elapsed * 100
    return {"publishers": count, "mode": mode, "server_cpu_pct": round(cpu_pct, 1),
            "cpu_pct_per_publisher": round(cpu_pct / count, 2), "failed": failed,
            "rtp_in_per_s": round((received_b - received_a) / elapsed),
            "server_rss_mb": round((b.rss_bytes or 0) / 2**20)}


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    make_clip(args.clip)
    for mode in args.modes.split(","):
        for count in (int(n) for n in args.publishers.split(",")):
            row = await step(args, count, mode)
            print(row, flush=True)
            rows.append(row)
            await asyncio.sleep(args.rest)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--publish":
        return publish(argv[1], float(argv[2]), argv[3] == "1", argv[4])
    p = argparse.ArgumentParser(prog="python -m bench.rtmp", description=__doc__.split("\n\n")[0])
    p.add_argument("--rtmp", required=True, help="rtmp://host:port/live")
    p.add_argument("--url", required=True, help="the server's HTTP URL, for /metrics")
    p.add_argument("--token", required=True, help="a token with publish for every room")
    p.add_argument("--server-pid", type=int, required=True, help="server pid, for CPU from /proc")
    p.add_argument("--publishers", default="1,2,4", help="publishers per step (default 1,2,4)")
    p.add_argument("--modes", default="av,v", help="av: H.264 + AAC; v: H.264 only (default av,v)")
    p.add_argument("--settle", type=float, default=8.0, help="seconds before measuring (default 8)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured (default 20)")
    p.add_argument("--rest", type=float, default=3.0, help="seconds between steps (default 3)")
    p.add_argument("--clip", default="/tmp/bench-rtmp-clip.flv", help="where to write the clip")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    rows = asyncio.run(run(args))
    print("| publishers | mode | RTP in pkt/s | server CPU % of a core | CPU % per publisher | failed |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['publishers']} | {r['mode']} | {r['rtp_in_per_s']} | {r['server_cpu_pct']} | "
              f"{r['cpu_pct_per_publisher']} | {r['failed']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
