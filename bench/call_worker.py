"""A worker process that places 1:1 calls for bench.calls and times each phase of their set-up.

Each party is a python-socketio client (sockets spread over the configured loopback source
addresses) and, once the call is answered, one sendrecv aiortc peer connection that sends a
pre-encoded clip (Opus, or Opus and 320x240 VP8 with ``"media": "video"``; nothing is
encoded per party) until ``media_seconds`` after the other party got its first frame, then
falls silent: the set-up is measured, and 100 calls still fit on one load core (aiortc
decodes every received frame, in a thread per receiver). The server's renegotiation offers (``call:sdp_offer``
from the server) are answered with ``call:sdp_answer``.

Started by the controller as ``python -m bench.call_worker``; JSON lines. The first line is its
configuration ``{"url", "sources", "ice_addresses", "media", "media_seconds", "lifetime",
"worker"}``, then commands, each answered by one line:

* ``{"op": "connect", "users": [[user_id, token], ...]}`` -> ``{"op": "connected", "ok",
  "errors"}``; the parties are numbered in the order of their users
* ``{"op": "run", "pairs": [[caller, callee, answer], ...], "start_at", "rate", "until"}``
  (monotonic seconds; ``rate`` calls a second, 0: all at once) -> places the calls, waits
  until every call ended or ``until``, hangs up the rest, and answers
  ``{"op": "ran", "calls": [...], "errors", "hung_up", "lag_p99_ms", "lag_max_ms"}``; each
  call holds its phases in milliseconds (see :func:`call_report`) and its timers' lateness
* ``{"op": "close"}`` -> close everything, ``{"op": "closed"}``, exit
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import socketio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .client_ice import use_host_addresses
from .load import LagWatch, read_config, reply, serve_commands
from .media_clip import EncodedFrame, VideoSpec, audio_clip, video_clip
from .whip_publisher import LoopedClipTrack

CALL_VIDEO = VideoSpec(width=320, height=240, fps=30, bitrate=300_000, seconds=4, gop=60)
SIGNAL_TIMEOUT = 30.0


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) * 1000, 2)


class BoundedClipTrack(LoopedClipTrack):
    """A looped pre-encoded clip that falls silent ``seconds`` after ``heard()`` (the
    other party got its first frame of ours) has become a time."""

    def __init__(self, kind: str, frames: list[EncodedFrame], *, fps: float, seconds: float,
                 heard: Callable[[], float | None]) -> None:
        super().__init__(kind, frames, fps=fps)
        self.seconds = seconds
        self.heard = heard

    async def recv(self) -> Any:
        heard = self.heard()
        if heard is not None and time.monotonic() - heard > self.seconds:
            await asyncio.Event().wait()  # silence until the peer connection is closed
        return await super().recv()


class CallParty:
    """One user's socket and, once the call is answered, its peer connection; the
    monotonic time of each step of the set-up."""

    def __init__(self, user_id: str, token: str, http: aiohttp.ClientSession,
                 media: MediaPlan) -> None:
        self.user_id = user_id
        self.token = token
        self.sio = socketio.AsyncClient(reconnection=False, http_session=http)
        self.media = media
        self.pc: RTCPeerConnection | None = None
        self.call_id: str | None = None
        self.t: dict[str, float] = {}  # step -> monotonic seconds
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
        self.peer: CallParty | None = None  # the other party, in this process
        self._drains: list[asyncio.Task[None]] = []

        @self.sio.on("call:incoming")
        async def on_incoming(data: dict[str, Any]) -> None:
            self.t.setdefault("incoming", time.monotonic())
            self.call_id = data["callId"]
            self.incoming.set()

        @self.sio.on("call:answered")
        async def on_answered(data: dict[str, Any]) -> None:
            self.t.setdefault("answered", time.monotonic())
            self.ends_at = data.get("endsAt")
            self.answered.set()

        @self.sio.on("call:extended")
        async def on_extended(data: dict[str, Any]) -> None:
            self.ends_at = data.get("endsAt", self.ends_at)

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
                await asyncio.wait_for(self.negotiated.wait(), SIGNAL_TIMEOUT)
                assert self.pc is not None
                await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self.sio.call("call:sdp_answer", {
                    "callId": self.call_id, "sdp": self.pc.localDescription.sdp},
                    timeout=SIGNAL_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - reported
                self.error = f"renegotiation: {type(exc).__name__}: {exc}"

    async def connect(self, url: str) -> None:
        await self.sio.connect(url, auth={"token": self.token}, transports=["websocket"],
                               wait_timeout=SIGNAL_TIMEOUT)

    async def join_media(self) -> None:
        """Publish our clip and receive the other party's, over one sendrecv connection."""
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for track in self.media.tracks(self._peer_heard):
            transceiver = pc.addTransceiver(track, direction="sendrecv")
            if track.kind == "video":
                caps = RTCRtpSender.getCapabilities("video")
                transceiver.setCodecPreferences(
                    [c for c in caps.codecs if c.mimeType in ("video/VP8", "video/rtx")])

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._drains.append(asyncio.ensure_future(self._drain(track)))

        @pc.on("iceconnectionstatechange")
        def on_ice() -> None:
            if pc.iceConnectionState in ("connected", "completed"):
                self.t.setdefault("ice", time.monotonic())

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.t.setdefault("dtls", time.monotonic())

        await pc.setLocalDescription(await pc.createOffer())
        self.t["offer_sent"] = time.monotonic()
        ack = await self.sio.call("call:sdp_offer", {"callId": self.call_id,
                                                      "sdp": pc.localDescription.sdp},
                                  timeout=SIGNAL_TIMEOUT)
        self.t["offer_acked"] = time.monotonic()
        if not isinstance(ack, dict) or "sdp" not in ack:
            raise RuntimeError(f"call:sdp_offer refused: {ack}")
        await pc.setRemoteDescription(RTCSessionDescription(ack["sdp"], "answer"))
        self.negotiated.set()

    def _peer_heard(self) -> float | None:
        return self.peer.t.get("first_frame") if self.peer is not None else None

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Consume decoded frames (aiortc always decodes); note the first of the other
        party's media (video when the call has video)."""
        try:
            while True:
                await track.recv()
                if track.kind == self.media.first_kind:
                    self.t.setdefault("first_frame", time.monotonic())
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


class MediaPlan:
    """What each party sends: pre-encoded Opus (and VP8 for video calls), until
    ``seconds`` after the other party got its first frame."""

    def __init__(self, kind: str, seconds: float) -> None:
        self.kind = kind
        self.seconds = seconds
        self.audio = audio_clip()
        self.video = video_clip(CALL_VIDEO) if kind == "video" else []
        self.first_kind = kind

    def tracks(self, heard: Callable[[], float | None]) -> list[MediaStreamTrack]:
        tracks: list[MediaStreamTrack] = []
        if self.kind == "video":
            tracks.append(BoundedClipTrack("video", self.video, fps=CALL_VIDEO.fps,
                                           seconds=self.seconds, heard=heard))
        tracks.append(BoundedClipTrack("audio", self.audio, fps=50, seconds=self.seconds,
                                       heard=heard))
        return tracks


async def place_call(caller: CallParty, callee: CallParty, media: str, *, answer: bool) -> None:
    caller.peer, callee.peer = callee, caller
    caller.t["initiate"] = callee.t["initiate"] = time.monotonic()
    ack = await caller.sio.call("call:initiate", {"to": callee.user_id, "media": media},
                                timeout=SIGNAL_TIMEOUT)
    caller.t["initiate_acked"] = time.monotonic()
    if not isinstance(ack, dict) or "callId" not in ack:
        raise RuntimeError(f"call:initiate refused: {ack}")
    caller.call_id = ack["callId"]
    caller.ring_deadline = ack.get("ringsUntil")
    await asyncio.wait_for(callee.incoming.wait(), SIGNAL_TIMEOUT)
    if not answer:
        return
    callee.t["answer"] = caller.t["answer"] = time.monotonic()
    reply = await callee.sio.call("call:answer", {"callId": callee.call_id}, timeout=SIGNAL_TIMEOUT)
    callee.t["answer_acked"] = time.monotonic()
    if not isinstance(reply, dict) or "error" in reply:
        raise RuntimeError(f"call:answer refused: {reply}")
    callee.ends_at = reply.get("endsAt")
    await asyncio.wait_for(caller.answered.wait(), SIGNAL_TIMEOUT)
    await asyncio.gather(caller.join_media(), callee.join_media())


def media_phases(party: CallParty) -> dict[str, float | None]:
    """One party's media set-up, each phase from the end of the one before."""
    t = party.t
    return {
        "offer_ack": _ms(t.get("offer_sent"), t.get("offer_acked")),
        "ice": _ms(t.get("offer_acked"), t.get("ice")),
        "dtls": _ms(t.get("ice"), t.get("dtls")),
        "first_frame": _ms(t.get("dtls"), t.get("first_frame")),
    }


def call_report(caller: CallParty, callee: CallParty, answered: bool) -> dict[str, Any]:
    """Phases of one call in milliseconds: ``initiate_ack`` (call:initiate to its ack),
    ``ringing`` (call:initiate to call:incoming at the callee), ``answer_ack`` (call:answer
    to its ack), ``answered`` (call:answer to call:answered at the caller), per party
    ``offer_ack``, ``ice``, ``dtls``, ``first_frame`` (see :func:`media_phases`), and
    ``setup`` (call:initiate to the first frame of the other party at both sides; None when
    either never got one) and ``answer_to_media`` (call:answer to the same: issue 22's
    call set-up, without the ringing); the timers' lateness (``call:ended`` minus its deadline)."""
    report: dict[str, Any] = {
        "answered": answered,
        "initiate_ack": _ms(caller.t.get("initiate"), caller.t.get("initiate_acked")),
        "ringing": _ms(caller.t.get("initiate"), callee.t.get("incoming")),
        "reason": caller.ended.get("reason") if caller.ended else None,
    }
    if answered:
        firsts = [caller.t.get("first_frame"), callee.t.get("first_frame")]
        report.update({
            "answer_ack": _ms(callee.t.get("answer"), callee.t.get("answer_acked")),
            "answered_at_caller": _ms(callee.t.get("answer"), caller.t.get("answered")),
            "parties": [media_phases(caller), media_phases(callee)],
            "first_frame_one_way": [_ms(p.t.get("initiate"), p.t.get("first_frame"))
                                    for p in (caller, callee)],
            "setup": None if None in firsts else _ms(caller.t["initiate"], max(firsts)),  # type: ignore[type-var]
            "answer_to_media": None if None in firsts else _ms(callee.t["answer"], max(firsts)),  # type: ignore[type-var]
            "server_offers": caller.server_offers + callee.server_offers,
        })
        if report["reason"] == "timeout" and callee.ends_at and caller.ended_at:
            report["call_late"] = round((caller.ended_at - callee.ends_at) * 1000, 2)
    elif report["reason"] == "missed" and caller.ring_deadline and caller.ended_at:
        report["ring_late"] = round((caller.ended_at - caller.ring_deadline) * 1000, 2)
    return report


class CallPool:
    def __init__(self, config: dict[str, Any]) -> None:
        self.url = config["url"].rstrip("/")
        self.sources: list[str] = config.get("sources") or ["127.0.0.1"]
        self.worker = int(config.get("worker", 0))
        self.media_kind = config.get("media", "audio")
        self.media = MediaPlan(self.media_kind, float(config.get("media_seconds", 3)))
        self.sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(s, 0)))
            for s in self.sources
        ]
        self.parties: list[CallParty] = []
        self.lag = LagWatch()

    async def connect(self, users: list[list[str]]) -> dict[str, Any]:
        errors: list[str] = []
        base = len(self.parties)
        fresh = []
        for i, (user_id, token) in enumerate(users):
            session = self.sessions[(self.worker + base + i) % len(self.sessions)]
            fresh.append(CallParty(user_id, token, session, self.media))
        self.parties += fresh
        results = await asyncio.gather(*(p.connect(self.url) for p in fresh),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                errors.append(f"{type(r).__name__}: {r}")
        return {"op": "connected", "ok": len(fresh) - len(errors), "errors": errors[:5]}

    async def run(self, pairs: list[list[Any]], start_at: float, rate: float,
                  until: float) -> dict[str, Any]:
        self.lag.take()
        errors: list[str] = []
        chosen = [(self.parties[a], self.parties[b], bool(answer)) for a, b, answer in pairs]

        async def one(i: int, caller: CallParty, callee: CallParty, answer: bool) -> None:
            at = start_at + (i / rate if rate > 0 else 0.0)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            try:
                await place_call(caller, callee, self.media_kind, answer=answer)
            except Exception as exc:  # noqa: BLE001 - reported
                errors.append(f"{type(exc).__name__}: {exc}")

        placing = asyncio.gather(*(one(i, a, b, ans) for i, (a, b, ans) in enumerate(chosen)))
        await asyncio.wait([asyncio.ensure_future(placing)],
                           timeout=max(0.0, until - time.monotonic()))
        waits = [asyncio.ensure_future(caller.ended_event.wait()) for caller, _, _ in chosen]
        if waits:
            await asyncio.wait(waits, timeout=max(0.0, until - time.monotonic()))
        for w in waits:
            w.cancel()
        lag = self.lag.take()
        hung_up = 0
        for caller, _, _ in chosen:
            if caller.ended is None and caller.call_id:
                hung_up += 1
                try:
                    await caller.sio.call("call:end", {"callId": caller.call_id}, timeout=5)
                except Exception:  # noqa: BLE001 - best effort
                    pass
        if not placing.done():
            placing.cancel()
        errors += [p.error for c, e, _ in chosen for p in (c, e) if p.error]
        return {"op": "ran", "calls": [call_report(c, e, ans) for c, e, ans in chosen],
                "errors": errors[:10], "hung_up": hung_up, **lag}

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.parties), return_exceptions=True)
        for session in self.sessions:
            await session.close()


async def serve() -> None:
    reader, config = await read_config()
    use_host_addresses(list(config.get("ice_addresses") or ["127.0.0.1"]))
    pool = CallPool(config)
    lag_task = asyncio.get_running_loop().create_task(pool.lag.watch())

    async def handle(command: dict[str, Any]) -> dict[str, Any] | None:
        op = command.get("op")
        if op == "connect":
            return await pool.connect(list(command["users"]))
        if op == "run":
            return await pool.run(list(command["pairs"]), float(command["start_at"]),
                                  float(command.get("rate", 0)), float(command["until"]))
        return None

    try:
        await serve_commands(reader, float(config.get("lifetime", 900)), handle)
    finally:
        lag_task.cancel()
        await pool.close()
    reply({"op": "closed"})


def main() -> None:
    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    main()
