"""The Node reference room (bench/node_reference/server.js) on airwave's own stack:
python-socketio over aiohttp on uvloop, with no database, no token check beyond
its shape, no presence, no limits. It is the floor of what that stack costs per
connection and per delivery, so that bench.signaling can tell what airwave adds
from what the stack itself costs.

    taskset -c 0 python -m bench.python_reference --port 8091
    taskset -c 1 python -m bench.signaling --url http://127.0.0.1:8091 --server-pid PID ...

Same shape as the Node room: ``POST /api/v1/dev/token`` (a ``ref.<user>.<name>``
token), ``POST /api/v1/rooms``, auth ``{token}`` on connect, ``stream:join
{roomId}`` with an ack, ``chat:send {roomId, text, clientId}`` acked and sent to
the room as ``chat:message``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from typing import Any

import socketio
import uvloop
from aiohttp import web

MAX_TEXT = 2000
LISTEN_BACKLOG = 1024  # as an airwave node listens (api.workers.LISTEN_BACKLOG)
YOUNG_COLLECTION_THRESHOLD = 10_000  # and collects (api.cli._tune_collector)


def build() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*",
                               max_http_buffer_size=256 * 1024)
    rooms: dict[str, dict[str, int]] = {}
    users: dict[str, str] = {}  # sid -> user id

    async def dev_token(request: web.Request) -> web.Response:
        body = await request.json()
        user_id = str(uuid.uuid4())
        name = str(body.get("name") or "") if isinstance(body, dict) else ""
        return web.json_response({"token": f"ref.{user_id}.{name}", "userId": user_id})

    async def create_room(request: web.Request) -> web.Response:
        await request.read()
        room_id = str(uuid.uuid4())
        rooms[room_id] = {"seq": 0}
        return web.json_response({"id": room_id, "type": "live", "status": "idle"}, status=201)

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token.startswith("ref."):
            raise socketio.exceptions.ConnectionRefusedError("a token is required", {"code": "unauthorized"})
        users[sid] = token.split(".")[1]
        await sio.enter_room(sid, f"user:{users[sid]}")

    @sio.on("disconnect")
    async def disconnect(sid: str, *args: Any) -> None:
        users.pop(sid, None)

    @sio.on("stream:join")
    async def stream_join(sid: str, data: Any = None) -> dict[str, Any]:
        room_id = data.get("roomId") if isinstance(data, dict) else None
        if room_id not in rooms:
            return {"error": {"code": "not_found", "message": "no such room"}}
        room = f"room:{room_id}"
        await sio.enter_room(sid, room)
        viewers = sum(1 for _ in sio.manager.get_participants("/", room))
        return {"roomId": room_id, "status": "idle", "streamId": None, "viewerCount": viewers}

    @sio.on("chat:send")
    async def chat_send(sid: str, data: Any = None) -> dict[str, Any]:
        room_id = data.get("roomId") if isinstance(data, dict) else None
        room = rooms.get(room_id) if isinstance(room_id, str) else None
        if room is None or not isinstance(data.get("text"), str) or len(data["text"]) > MAX_TEXT:
            return {"error": {"code": "bad_request", "message": "chat:send takes {roomId, text, clientId}"}}
        room["seq"] += 1
        message = {"id": str(uuid.uuid4()), "seq": room["seq"], "roomId": room_id,
                   "userId": users.get(sid), "text": data["text"], "createdAt": time.time(),
                   "clientId": data.get("clientId")}
        await sio.emit("chat:message", message, to=f"room:{room_id}")
        return {"id": message["id"], "seq": message["seq"], "createdAt": message["createdAt"]}

    app = web.Application()
    app.router.add_post("/api/v1/dev/token", dev_token)
    app.router.add_post("/api/v1/rooms", create_room)
    sio.attach(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(build(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
    gc.collect()
    gc.freeze()
    _, middle, full = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, full)
    print(f"python reference room on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()  # until interrupted
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
