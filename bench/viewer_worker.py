"""A worker process that runs many :class:`CheapViewer` s for bench.fanout.

Started by the controller as ``python -m bench.viewer_worker``; speaks JSON
lines: the first line on stdin is its configuration
``{"url", "token", "ice_addresses", "lifetime"}``, then commands, each
answered by one line on stdout:

* ``{"op": "join", "count": N, "concurrency": C, "rate": R, "step": S}`` -> ``{"op": "joined", "ok", "failed", "errors"}``;
  with ``"low_share": F, "low_bps": B`` that share of the worker's viewers reports a downlink of B bit/s (REMB)
* ``{"op": "snapshot"}`` -> the summed counters, every viewer's join times and video bytes
* ``{"op": "close"}`` -> DELETE every session, stop, ``{"op": "closed"}``, exit

It also closes everything and exits when stdin ends (the controller died) or
when its lifetime (seconds) runs out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiortc.rtcdtlstransport import RTCCertificate

from .client_ice import use_host_addresses
from .load import read_config, reply, serve_commands
from .whep_viewer import CheapViewer


class ViewerPool:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token
        self.certificate = RTCCertificate.generateCertificate()
        self.viewers: list[tuple[int, CheapViewer]] = []
        self.http: aiohttp.ClientSession | None = None
        self.started = 0  # viewers started so far, for the low-bandwidth share

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=64)
        self.http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=20)
        )

    async def join(
        self, count: int, concurrency: int, step: int, rate: float,
        low_share: float = 0.0, low_bps: int = 0,
    ) -> dict[str, Any]:
        """Join ``count`` viewers, starting ``rate`` per second (0: all at once),
        at most ``concurrency`` in flight; ``low_share`` of them report ``low_bps``."""
        assert self.http is not None
        gate = asyncio.Semaphore(max(1, concurrency))
        errors: list[str] = []
        ok = 0
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(i: int) -> None:
            nonlocal ok
            if rate > 0:
                await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            n = self.started
            self.started += 1
            low = low_share > 0 and int((n + 1) * low_share) > int(n * low_share)
            viewer = CheapViewer(self.certificate, remb_bps=low_bps if low else None)
            async with gate:
                try:
                    await viewer.join(self.http, self.url, self.token)
                except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                    viewer.error = f"{type(exc).__name__}: {exc}"
                    if len(errors) < 5:
                        errors.append(viewer.error)
                    await viewer.close(self.http, self.token)
                else:
                    ok += 1
            self.viewers.append((step, viewer))

        await asyncio.gather(*(one(i) for i in range(count)))
        return {"op": "joined", "ok": ok, "failed": count - ok, "errors": errors}

    def snapshot(self) -> dict[str, Any]:
        totals = {
            "viewers": 0, "video_packets": 0, "video_bytes": 0, "audio_packets": 0,
            "audio_bytes": 0, "expected": 0, "lost": 0, "other_packets": 0,
        }
        joins = []
        video_bytes = []
        for step, v in self.viewers:
            c = v.counters
            video_bytes.append(c.video.octets - c.video_padding_bytes if v.error is None else -1)
            joins.append([step, v.error is None, v.times.post_ms, v.times.first_video_ms,
                          v.times.keyframe_ms, v.times.ice_ms, v.times.dtls_ms])
            if v.error is not None:
                continue
            c = v.counters
            totals["viewers"] += 1
            totals["video_packets"] += c.video.packets
            totals["video_bytes"] += c.video.octets
            totals["audio_packets"] += c.audio.packets
            totals["audio_bytes"] += c.audio.octets
            totals["expected"] += c.video.expected + c.audio.expected
            totals["lost"] += c.video.lost + c.audio.lost
            totals["other_packets"] += c.other
        return {"op": "snapshot", **totals, "joins": joins, "video_bytes_each": video_bytes}

    async def close(self) -> None:
        http = self.http
        gate = asyncio.Semaphore(32)

        async def one(v: CheapViewer) -> None:
            async with gate:
                await v.close(http, self.token)

        await asyncio.gather(*(one(v) for _, v in self.viewers))
        self.viewers.clear()
        if http is not None:
            await http.close()


async def serve() -> None:
    reader, config = await read_config()
    use_host_addresses(config.get("ice_addresses") or ["127.0.0.1"])
    pool = ViewerPool(config["url"], config.get("token"))
    await pool.open()

    async def handle(command: dict[str, Any]) -> dict[str, Any] | None:
        op = command.get("op")
        if op == "join":
            return await pool.join(int(command["count"]), int(command.get("concurrency", 8)),
                                   int(command.get("step", 0)), float(command.get("rate", 0)),
                                   float(command.get("low_share", 0)), int(command.get("low_bps", 0)))
        if op == "snapshot":
            return pool.snapshot()
        return None

    try:
        await serve_commands(reader, float(config.get("lifetime", 3600)), handle)
    finally:
        await pool.close()
    reply({"op": "closed"})


def main() -> None:
    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    main()
