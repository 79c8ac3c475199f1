"""The naive relay bench.fanout compares airwave with: built the textbook way
with aiortc, as its examples do. Each WHIP publisher is an RTCPeerConnection
whose received tracks are decoded once and shared with ``MediaRelay``; each
WHEP viewer is an RTCPeerConnection that encodes those frames again for
itself. POST /whip/{room} and /whep/{room} with an SDP offer (201, answer,
Location); DELETE the Location to end. No authentication: loopback only.

    python -m bench.reference_relay --port 8090

Prints ``listening http://HOST:PORT`` once it serves; stops on SIGTERM/SIGINT
or after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid
from dataclasses import dataclass, field

from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from .client_ice import use_host_addresses


@dataclass
class RelayRoom:
    publisher: RTCPeerConnection | None = None
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)
    viewers: dict[str, RTCPeerConnection] = field(default_factory=dict)


class ReferenceRelay:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.rooms: dict[str, RelayRoom] = {}
        self.sessions: dict[str, tuple[str, RTCPeerConnection]] = {}

    async def whip(self, request: web.Request) -> web.Response:
        room_name = request.match_info["room"]
        room = self.rooms.setdefault(room_name, RelayRoom())
        if room.publisher is not None:
            raise web.HTTPConflict(text="room already has a publisher")
        offer = await request.text()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        room.publisher = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            room.tracks[track.kind] = track

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return self._created(request, "whip", room_name, pc)

    async def whep(self, request: web.Request) -> web.Response:
        room_name = request.match_info["room"]
        room = self.rooms.get(room_name)
        if room is None or not room.tracks:
            raise web.HTTPNotFound(text="room has no publisher")
        offer = await request.text()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        for kind in ("video", "audio"):
            track = room.tracks.get(kind)
            if track is not None and any(t.kind == kind for t in pc.getTransceivers()):
                pc.addTrack(self.relay.subscribe(track))
        await pc.setLocalDescription(await pc.createAnswer())
        room.viewers[str(id(pc))] = pc
        return self._created(request, "whep", room_name, pc)

    def _created(self, request: web.Request, kind: str, room: str, pc: RTCPeerConnection) -> web.Response:
        session = uuid.uuid4().hex
        self.sessions[session] = (room, pc)
        response = web.Response(status=201, text=pc.localDescription.sdp,
                                content_type="application/sdp")
        response.headers["Location"] = f"/{kind}/{room}/{session}"
        return response

    async def delete(self, request: web.Request) -> web.Response:
        entry = self.sessions.pop(request.match_info["session"], None)
        if entry is None:
            raise web.HTTPNotFound(text="no such session")
        room_name, pc = entry
        room = self.rooms.get(room_name)
        if room is not None:
            if room.publisher is pc:
                self.rooms.pop(room_name, None)
            room.viewers.pop(str(id(pc)), None)
        await pc.close()
        return web.Response(status=200)

    async def close(self) -> None:
        pcs = [pc for _, pc in self.sessions.values()]
        self.sessions.clear()
        self.rooms.clear()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)


async def serve(host: str, port: int, lifetime: float) -> None:
    relay = ReferenceRelay()
    app = web.Application()
    app.router.add_post("/whip/{room}", relay.whip)
    app.router.add_post("/whep/{room}", relay.whep)
    app.router.add_delete("/whip/{room}/{session}", relay.delete)
    app.router.add_delete("/whep/{room}/{session}", relay.delete)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    print(f"listening http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), lifetime)
    except TimeoutError:
        pass
    await relay.close()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reference_relay", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--ice-address", default="127.0.0.1",
                   help="addresses its peer connections gather, comma-separated")
    p.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many seconds")
    args = p.parse_args(argv)
    use_host_addresses([a.strip() for a in args.ice_address.split(",")])
    import uvloop

    uvloop.run(serve(args.host, args.port, args.lifetime))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
