"""bench.recording: the server's CPU for one recording next to one viewer.

One WHIP publisher (VP8 720p 30 fps about 1.5 Mbit/s + Opus, a clip encoded
once and looped, never encoded again) into a room, then in turn: nothing
else, one WHEP viewer (counted, not decoded), the viewer plus a recording of
the room (``POST /api/v1/rooms/{room}/recording``, stopped with ``DELETE``).
Each phase settles for ``--settle`` seconds, then the server's CPU
(``/proc/<--server-pid>`` and its children) is measured for ``--duration``
seconds; ``--rounds`` repeats the viewer and recording phases. It drives the
server over HTTP only.

    python -m bench.recording --url http://127.0.0.1:8080 --token TOKEN --server-pid PID \\
        --room bench-rec --rounds 3 --out recording.json

TOKEN must grant publish and subscribe for the room, and its user becomes the
room's owner by publishing first (``airwave token --user bench --room '*'
--publish --subscribe``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp
from aiortc.rtcdtlstransport import RTCCertificate

from .media_clip import VideoSpec, audio_clip, bitrate, video_clip
from .server_probe import ServerProbe
from .whep_viewer import CheapViewer
from .whip_publisher import LoopedClipTrack, WhipPublisher


async def _cpu_pct(probe: ServerProbe, settle: float, duration: float) -> float:
    await asyncio.sleep(settle)
    a = await probe.sample()
    await asyncio.sleep(duration)
    b = await probe.sample()
    assert a.cpu_seconds is not None and b.cpu_seconds is not None
    return round((b.cpu_seconds - a.cpu_seconds) / (b.at - a.at) * 100, 2)


async def _call(http: aiohttp.ClientSession, method: str, url: str, token: str) -> dict[str, Any]:
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}) as r:
        body = await r.json()
        if r.status >= 300:
            raise RuntimeError(f"{method} {url}: HTTP {r.status}: {body}")
        return body


async def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = VideoSpec()
    video, audio = video_clip(spec), audio_clip()
    publisher = WhipPublisher(
        [LoopedClipTrack("video", video, fps=spec.fps), LoopedClipTrack("audio", audio, fps=50)]
    )
    base = args.url.rstrip("/")
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        probe = ServerProbe(http, base, args.server_pid)
        await publisher.start(http, f"{base}/whip/{args.room}", args.token)
        try:
            async with asyncio.timeout(15):
                await publisher.connected.wait()
            alone = await _cpu_pct(probe, args.settle, args.duration)
            print({"phase": "publisher", "cpu_pct": alone}, file=sys.stderr, flush=True)
            for n in range(args.rounds):
                viewer = CheapViewer(RTCCertificate.generateCertificate())
                await viewer.join(http, f"{base}/whep/{args.room}", args.token)
                try:
                    with_viewer = await _cpu_pct(probe, args.settle, args.duration)
                    room = f"{base}/api/v1/rooms/{args.room}/recording"
                    started = await _call(http, "POST", room, args.token)
                    with_recording = await _cpu_pct(probe, args.settle, args.duration)
                    done = await _call(http, "DELETE", room, args.token)
                finally:
                    await viewer.close(http, args.token)
                await _call(http, "DELETE", f"{base}/api/v1/recordings/{started['id']}", args.token)
                row = {
                    "round": n + 1,
                    "publisher_cpu_pct": alone,
                    "viewer_cpu_pct": with_viewer,
                    "recording_cpu_pct": with_recording,
                    "viewer_cost_pct": round(with_viewer - alone, 2),
                    "recording_cost_pct": round(with_recording - with_viewer, 2),
                    "file_kbps": round(done["size"] * 8 / max(done["duration"], 0.001) / 1000),
                    "status": done["status"],
                }
                print(row, file=sys.stderr, flush=True)
                rows.append(row)
        finally:
            await publisher.stop(http, args.token)
    return {
        "video": f"VP8 {spec.width}x{spec.height} {spec.fps} fps",
        "video_kbps": round(bitrate(video, spec.fps) / 1000),
        "audio_kbps": round(bitrate(audio, 50) / 1000),
        "rounds": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.recording", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--url", required=True, help="the server's HTTP URL")
    p.add_argument("--token", required=True, help="publish + subscribe for the room; its owner")
    p.add_argument("--server-pid", type=int, required=True, help="server pid, for CPU from /proc")
    p.add_argument("--room", default="bench-rec", help="room to publish into (default bench-rec)")
    p.add_argument("--rounds", type=int, default=3, help="viewer/recording rounds (default 3)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds before measuring (default 5)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured (default 20)")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    print(
        f"publisher: {result['video']}, {result['video_kbps']} kbit/s video, "
        f"{result['audio_kbps']} kbit/s audio"
    )
    print(
        "| round | publisher only | + 1 viewer | + 1 recording | viewer costs "
        "| recording costs | file kbit/s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in result["rounds"]:
        print(
            f"| {r['round']} | {r['publisher_cpu_pct']} | {r['viewer_cpu_pct']} | "
            f"{r['recording_cpu_pct']} | {r['viewer_cost_pct']} | {r['recording_cost_pct']} | "
            f"{r['file_kbps']} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if all(r["status"] == "complete" for r in result["rounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
