"""bench.calls: concurrent 1:1 calls with media through the SFU, and how
punctual the call timers are.

``--calls`` pairs of users each place a video call (``call:initiate``), the
callee answers on ``call:incoming``, and both parties join the call's media
(``call:sdp_offer`` with a sendrecv aiortc peer sending a pre-encoded
320x240 VP8 clip and Opus; the server's renegotiation offers,
``call:sdp_offer`` from the server, are answered with ``call:sdp_answer``).
Set-up time is from ``call:initiate`` to the first video packet of the other
party at each side; the call's set-up is the later of the two (p50/p95).

``--ring-calls`` more pairs place calls that nobody answers: the server ends
them as ``missed`` at ``ringsUntil``; answered calls end as ``timeout`` at
``endsAt`` when the server has a call duration. The lateness of each
``call:ended`` after its deadline is reported (p50/p99). Run it against a
server with short timers to see them in a short run, e.g.
``AIRWAVE_RING_TIMEOUT=5 AIRWAVE_CALL_DURATION=15``. Calls still going at the
end of ``--duration`` are hung up.

    python -m bench.calls --url http://127.0.0.1:8080 --calls 10 --ring-calls 10 \\
        --duration 30 --out calls.json

Users: ``--tokens-file`` (two per call) or the development sign-in. When the
server requires matches (AIRWAVE_REQUIRE_MATCH), ``--token`` must be an admin
token: the pairs are matched with ``PUT /api/v1/matches``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
import socketio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .client_ice import use_host_addresses
from .media_clip import VideoSpec, audio_clip, video_clip
from .report import chart_latency, finite, format_table, percentile, run_script
from .server_probe import ServerProbe
from .user_tokens import UserToken, user_tokens
from .whip_publisher import LoopedClipTrack

CALL_VIDEO = VideoSpec(width=320, height=240, fps=30, bitrate=300_000, seconds=4, gop=60)


class CallParty:
    """One user's socket and, once the call is answered, its peer connection."""

    def __init__(self, user: UserToken, video: list[Any], audio: list[Any]) -> None:
        self.user = user
        self.sio = socketio.AsyncClient(reconnection=False)
        self.pc: RTCPeerConnection | None = None
        self.video = video
        self.audio = audio
        self.call_id: str | None = None
        self.t0 = 0.0
        self.first_video_ms: float | None = None
        self.ended: dict[str, Any] | None = None
        self.ended_at: float | None = None  # epoch seconds
        self.ends_at: float | None = None  # the call's deadline once answered (epoch s)
        self.ring_deadline: float | None = None  # ringsUntil (epoch s), at the caller
        self.incoming = asyncio.Event()
        self.answered = asyncio.Event()
        self.ended_event = asyncio.Event()
        self.error: str | None = None
        # our own offer/answer is done: a server offer that arrives before the
        # ack of ours (the event can overtake the ack) waits for it
        self.negotiated = asyncio.Event()
        self.server_offers = 0
        self._drains: list[asyncio.Task[None]] = []

        @self.sio.on("call:incoming")
        async def on_incoming(data: dict[str, Any]) -> None:
            self.call_id = data["callId"]
            self.incoming.set()

        @self.sio.on("call:answered")
        async def on_answered(data: dict[str, Any]) -> None:
            self.ends_at = data.get("endsAt")
            self.answered.set()

        @self.sio.on("call:ended")
        async def on_ended(data: dict[str, Any]) -> None:
            self.ended = data
            self.ended_at = time.time()
            self.ended_event.set()

        @self.sio.on("call:sdp_offer")
        async def on_server_offer(data: dict[str, Any]) -> None:
            if data.get("callId") != self.call_id:
                return
            self.server_offers += 1
            try:
                await asyncio.wait_for(self.negotiated.wait(), 15)
                assert self.pc is not None
                await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self.sio.call("call:sdp_answer", {
                    "callId": self.call_id, "sdp": self.pc.localDescription.sdp}, timeout=10)
            except Exception as exc:  # noqa: BLE001 - reported
                self.error = f"renegotiation: {type(exc).__name__}: {exc}"

    async def connect(self, url: str) -> None:
        await self.sio.connect(url, auth={"token": self.user.token}, transports=["websocket"],
                               wait_timeout=10)

    async def join_media(self) -> None:
        """Publish our clip and receive the other party's, over one sendrecv connection."""
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        video = LoopedClipTrack("video", self.video, fps=CALL_VIDEO.fps)
        audio = LoopedClipTrack("audio", self.audio, fps=50)
        for track in (video, audio):
            transceiver = pc.addTransceiver(track, direction="sendrecv")
            if track.kind == "video":
                caps = RTCRtpSender.getCapabilities("video")
                transceiver.setCodecPreferences(
                    [c for c in caps.codecs if c.mimeType in ("video/VP8", "video/rtx")])

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._drains.append(asyncio.ensure_future(self._drain(track)))

        await pc.setLocalDescription(await pc.createOffer())
        ack = await self.sio.call("call:sdp_offer", {"callId": self.call_id,
                                                      "sdp": pc.localDescription.sdp}, timeout=15)
        if not isinstance(ack, dict) or "sdp" not in ack:
            raise RuntimeError(f"call:sdp_offer refused: {ack}")
        await pc.setRemoteDescription(RTCSessionDescription(ack["sdp"], "answer"))
        self.negotiated.set()

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Consume decoded frames (aiortc always decodes); note the first video one."""
        try:
            while True:
                await track.recv()
                if track.kind == "video" and self.first_video_ms is None:
                    self.first_video_ms = (time.monotonic() - self.t0) * 1000
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def close(self) -> None:
        for task in self._drains:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        try:
            await asyncio.wait_for(self.sio.disconnect(), 5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass


async def match(http: aiohttp.ClientSession, url: str, token: str, a: str, b: str) -> None:
    async with http.put(f"{url}/api/v1/matches", json={"userA": a, "userB": b},
                        headers={"Authorization": f"Bearer {token}"}) as r:
        if r.status >= 300:
            raise RuntimeError(f"PUT /api/v1/matches: HTTP {r.status}: {await r.text()}")


async def place_call(caller: CallParty, callee: CallParty, *, answer: bool) -> None:
    caller.t0 = callee.t0 = time.monotonic()
    ack = await caller.sio.call("call:initiate", {"to": callee.user.user_id, "media": "video"},
                                timeout=10)
    if not isinstance(ack, dict) or "callId" not in ack:
        raise RuntimeError(f"call:initiate refused: {ack}")
    caller.call_id = ack["callId"]
    caller.ring_deadline = ack.get("ringsUntil")
    await asyncio.wait_for(callee.incoming.wait(), 10)
    if not answer:
        return
    reply = await callee.sio.call("call:answer", {"callId": callee.call_id}, timeout=10)
    if not isinstance(reply, dict) or "error" in reply:
        raise RuntimeError(f"call:answer refused: {reply}")
    callee.ends_at = reply.get("endsAt")
    await asyncio.wait_for(caller.answered.wait(), 10)
    await asyncio.gather(caller.join_media(), callee.join_media())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    use_host_addresses([a.strip() for a in args.ice_address.split(",")])
    url = args.url.rstrip("/")
    video, audio = video_clip(CALL_VIDEO), audio_clip()
    pairs_total = args.calls + args.ring_calls
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        probe = ServerProbe(http, url, args.server_pid)
        users = await user_tokens(http, url, 2 * pairs_total, tokens_file=args.tokens_file,
                                  prefix="bench-call-")
        if len({u.user_id for u in users}) < len(users):
            raise SystemExit(f"bench.calls needs {len(users)} distinct users (two per call)")
        parties = [CallParty(u, video, audio) for u in users]
        pairs = [(parties[2 * i], parties[2 * i + 1]) for i in range(pairs_total)]
        if args.token:
            await asyncio.gather(*(match(http, url, args.token, a.user.user_id, b.user.user_id)
                                   for a, b in pairs))
        errors: list[str] = []
        try:
            await asyncio.gather(*(p.connect(url) for p in parties))
            sample_a = await probe.sample()
            start = time.monotonic()

            async def one(i: int, caller: CallParty, callee: CallParty) -> None:
                try:
                    await place_call(caller, callee, answer=i < args.calls)
                except Exception as exc:  # noqa: BLE001 - reported
                    errors.append(f"{type(exc).__name__}: {exc}")

            await asyncio.gather(*(one(i, a, b) for i, (a, b) in enumerate(pairs)))
            # wait for the timers (or the end of --duration)
            remaining = max(0.0, start + args.duration - time.monotonic())
            waits = [asyncio.ensure_future(p.ended_event.wait()) for p, _ in pairs]
            await asyncio.wait(waits, timeout=remaining)
            for w in waits:
                w.cancel()
            elapsed = time.monotonic() - start
            sample_b = await probe.sample()
            hung_up = 0
            for caller, _ in pairs:
                if caller.ended is None and caller.call_id:
                    hung_up += 1
                    try:
                        await caller.sio.call("call:end", {"callId": caller.call_id}, timeout=5)
                    except Exception:  # noqa: BLE001 - best effort
                        pass
        finally:
            await asyncio.gather(*(p.close() for p in parties), return_exceptions=True)

    answered = pairs[: args.calls]
    ringing = pairs[args.calls:]
    setups, one_way = [], []
    for caller, callee in answered:
        sides = [caller.first_video_ms, callee.first_video_ms]
        one_way += [s for s in sides if s is not None]
        setups.append(max(sides) if None not in sides else float("inf"))
    ring_late = [(c.ended_at - c.ring_deadline) * 1000 for c, _ in ringing
                 if c.ended and c.ended.get("reason") == "missed" and c.ring_deadline and c.ended_at]
    call_late = [(c.ended_at - callee.ends_at) * 1000 for c, callee in answered
                 if c.ended and c.ended.get("reason") == "timeout" and callee.ends_at and c.ended_at]
    errors += [p.error for p in parties if p.error]
    cpu = None
    if sample_a.cpu_seconds is not None and sample_b.cpu_seconds is not None:
        cpu = (sample_b.cpu_seconds - sample_a.cpu_seconds) / elapsed * 100
    return {
        "script": "bench.calls",
        "url": url,
        "calls": args.calls,
        "ring_calls": args.ring_calls,
        "video": f"VP8 {CALL_VIDEO.width}x{CALL_VIDEO.height} {CALL_VIDEO.fps} fps",
        "calls_with_media_both_ways": sum(1 for s in setups if s != float("inf")),
        "parties_with_video": len(one_way),
        "server_offers": sum(p.server_offers for p in parties),
        "setup_p50_ms": finite(percentile(setups, 50), 1),
        "setup_p95_ms": finite(percentile(setups, 95), 1),
        "first_frame_one_way_p50_ms": finite(percentile(one_way, 50), 1),
        "ring_timeouts": len(ring_late),
        "ring_timeout_late_p50_ms": finite(percentile(ring_late, 50), 1),
        "ring_timeout_late_p99_ms": finite(percentile(ring_late, 99), 1),
        "call_timeouts": len(call_late),
        "call_timeout_late_p50_ms": finite(percentile(call_late, 50), 1),
        "call_timeout_late_p99_ms": finite(percentile(call_late, 99), 1),
        "ended_reasons": _count(c.ended.get("reason") for c, _ in pairs if c.ended),
        "hung_up_at_end": hung_up,
        "seconds": round(elapsed, 2),
        "server_cpu_pct": finite(cpu),
        "errors": errors[:10],
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


COLUMNS = [("calls_with_media_both_ways", "calls w/ media"), ("setup_p50_ms", "setup p50"),
           ("setup_p95_ms", "setup p95"), ("ring_timeouts", "missed"),
           ("ring_timeout_late_p50_ms", "ring late p50"), ("ring_timeout_late_p99_ms", "ring late p99"),
           ("call_timeouts", "timed out"), ("call_timeout_late_p50_ms", "call late p50"),
           ("call_timeout_late_p99_ms", "call late p99"), ("server_cpu_pct", "cpu%")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", help="admin token: matches the pairs (needed with AIRWAVE_REQUIRE_MATCH)")
    p.add_argument("--tokens-file", help="one user token per line, two per call")
    p.add_argument("--calls", type=int, default=10, help="answered calls with media (default 10)")
    p.add_argument("--ring-calls", type=int, default=10, help="calls left ringing (default 10)")
    p.add_argument("--duration", type=float, default=40.0,
                   help="seconds to wait for the timers before hanging up (default 40)")
    p.add_argument("--server-pid", type=int, help="server pid for CPU from /proc (else /metrics)")
    p.add_argument("--ice-address", default="127.0.0.1", help="addresses the peers gather")
    p.add_argument("--out", default="calls.json")
    p.add_argument("--chart", help="PNG (default: --out with .png)")
    args = p.parse_args(argv)
    if args.calls < 0 or args.ring_calls < 0 or args.calls + args.ring_calls < 1:
        p.error("at least one call")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, chart = run_script("calls", args, run)
    series = {
        "set-up (ms)": [(50, result["setup_p50_ms"]), (95, result["setup_p95_ms"])],
        "ring timeout late (ms)": [(50, result["ring_timeout_late_p50_ms"]),
                                   (99, result["ring_timeout_late_p99_ms"])],
        "call timeout late (ms)": [(50, result["call_timeout_late_p50_ms"]),
                                   (99, result["call_timeout_late_p99_ms"])],
    }
    series = {k: [(x, y) for x, y in v if y is not None] for k, v in series.items()}
    drawn = chart_latency(chart, series, "percentile", "ms", "bench.calls")
    print(format_table([result], COLUMNS))
    if result["errors"]:
        print(f"errors: {result['errors']}")
    print(f"JSON: {args.out}" + (f", chart: {chart}" if drawn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
