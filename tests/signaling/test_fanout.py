"""Broadcasts (signaling/fanout.py): every socket of a room gets every event in order, whether
it was written at once as the shared frame or queued behind a busy writer, over WebSocket or
long-polling; a socket that stops reading is cut off as a slow consumer with its queue bounded,
and the others do not notice. Also pins the python-socketio/engineio internals fanout relies on."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from typing import Any

import engineio
import engineio.async_drivers.aiohttp
import socketio
from engineio.async_socket import AsyncSocket
from socketio.async_pubsub_manager import AsyncPubSubManager

from api.components import AIRWAVE
from signaling.fanout import (
    COALESCED,
    SAMPLED_OUT,
    SLOW_CONSUMERS,
    FanoutManager,
    FanoutRedisManager,
    websocket_driver,
    websocket_text_frame,
)
from signaling.server import room_audience
from tests.conftest import RunningApp, rest, start_app
from tests.rooms.room_clients import Listener


async def _live_room(app: RunningApp) -> str:
    status, body = await rest(app, "POST", "/api/v1/rooms", "host",
                              json={"type": "live", "title": "fan-out", "public": True})
    assert status == 201, body
    return body["id"]


async def _viewer(app: RunningApp, user: str, room_id: str, transport: str) -> Listener:
    client = socketio.AsyncClient(reconnection=False)
    listener = Listener(client)
    await client.connect(app.url, auth={"token": app.token(user)}, transports=[transport],
                         wait_timeout=5)
    ack = await listener.call("stream:join", {"roomId": room_id})
    assert ack["roomId"] == room_id, ack
    return listener


class StalledSocket:
    """A raw WebSocket Socket.IO client that joins a room and then never reads again
    (a small receive buffer, so the server's side fills up soon)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> StalledSocket:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        header = bytes((0x81, 0x80 | size)) if size < 126 else (
            bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big"))
        self.writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def receive(self) -> str:
        first = await self.reader.readexactly(2)
        size = first[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        return (await self.reader.readexactly(size)).decode()

    async def expect(self, prefix: str) -> str:
        async with asyncio.timeout(5):
            while True:
                text = await self.receive()
                if text == "2":
                    self.send("3")
                elif text.startswith(prefix):
                    return text

    async def join(self, token: str, room_id: str) -> str:
        opened = await self.expect("0")
        self.send("40" + json.dumps({"token": token}))
        sid = json.loads((await self.expect("40"))[2:])["sid"]
        self.send("420" + json.dumps(["stream:join", {"roomId": room_id}]))
        ack = json.loads((await self.expect("430"))[3:])[0]
        assert ack["roomId"] == room_id, (opened, ack)
        return sid

    def close(self) -> None:
        self.writer.transport.abort()


async def test_every_socket_gets_every_broadcast_in_order(running: RunningApp) -> None:
    room_id = await _live_room(running)
    sio = running.app[AIRWAVE].signaling.sio
    viewers = [await _viewer(running, "ws-1", room_id, "websocket"),
               await _viewer(running, "ws-2", room_id, "websocket"),
               await _viewer(running, "poll-1", room_id, "polling")]
    try:
        # bursts: some go out at once as the shared frame, some queue behind a busy writer
        for n in range(120):
            text = "x" * (20 if n % 3 else 3000)  # 7- and 16-bit frame lengths
            await sio.emit("chat:message", {"roomId": room_id, "seq": n, "text": text},
                           to=room_audience(room_id))
            if n % 40 == 0:
                await asyncio.sleep(0.01)
        for viewer in viewers:
            await viewer.wait("chat:message", lambda m: m["seq"] == 119, within=10)
            assert [m["seq"] for m in viewer.events["chat:message"]] == list(range(120))
            assert all(len(m["text"]) in (20, 3000) for m in viewer.events["chat:message"])
    finally:
        for viewer in viewers:
            if viewer.client.transport() == "polling":
                await viewer.client.eio.disconnect(abort=True)
            else:
                await viewer.close()


async def test_a_socket_that_stops_reading_is_cut_off_and_the_others_go_on(make_settings) -> None:
    app = await start_app(make_settings(socketio_send_queue="16"))
    stalled: StalledSocket | None = None
    healthy: Listener | None = None
    try:
        room_id = await _live_room(app)
        signaling = app.app[AIRWAVE].signaling
        healthy = await _viewer(app, "reader", room_id, "websocket")
        stalled = await StalledSocket.open(app.url)
        stalled_sid = await stalled.join(app.token("stalled"), room_id)
        assert stalled_sid in signaling.identities
        cut_before = SLOW_CONSUMERS._value.get()
        eio = signaling.sio.eio
        stalled_eio = signaling.sio.manager.eio_sid_from_sid(stalled_sid, "/")
        longest_queue = 0
        sent = 0
        deadline = time.monotonic() + 20
        while stalled_sid in signaling.identities and time.monotonic() < deadline and sent < 3000:
            await signaling.sio.emit("chat:message",
                                     {"roomId": room_id, "seq": sent, "text": "y" * 8000},
                                     to=room_audience(room_id))
            sent += 1
            stalled_socket = eio.sockets.get(stalled_eio)
            if stalled_socket is not None:
                longest_queue = max(longest_queue, stalled_socket.queue.qsize())
            await asyncio.sleep(0.001)
        assert stalled_sid not in signaling.identities, f"still connected after {sent} messages"
        assert SLOW_CONSUMERS._value.get() == cut_before + 1
        assert longest_queue <= 16  # bounded: what it did not read was never kept beyond that
        # the reading socket got everything, in order, and is still connected
        await healthy.wait("chat:message", lambda m: m["seq"] == sent - 1, within=10)
        assert [m["seq"] for m in healthy.events["chat:message"]] == list(range(sent))
        assert healthy.client.connected
    finally:
        if stalled is not None:
            stalled.close()
        if healthy is not None:
            await healthy.close()
        await app.server.close()


def test_websocket_text_frame_lengths() -> None:
    from engineio import packet as eio_packet

    for size, header in ((5, b"\x81\x05"), (200, b"\x81\x7e\x00\xc8"),
                         (70_000, b"\x81\x7f" + (70_000).to_bytes(8, "big"))):
        pkt = eio_packet.Packet(eio_packet.MESSAGE, "a" * (size - 1))  # "4" + data
        frame = websocket_text_frame([pkt])
        assert frame is not None and frame.startswith(header) and len(frame) == len(header) + size
    binary = eio_packet.Packet(eio_packet.MESSAGE, b"\x00\x01")
    assert websocket_text_frame([binary]) is None


def test_the_socketio_internals_fanout_relies_on() -> None:
    # FanoutManager sits between the pub/sub manager and AsyncManager, so both Redis-heard and
    # local emits reach it through super()
    mro = FanoutRedisManager.__mro__
    assert mro.index(AsyncPubSubManager) < mro.index(FanoutManager) < mro.index(
        socketio.AsyncManager)
    assert "emit" in vars(AsyncPubSubManager) and "_handle_emit" in vars(
        AsyncPubSubManager)
    server = engineio.AsyncServer(async_mode="aiohttp")
    assert "websocket" in server._async and server.create_queue().maxsize == 0
    sock = AsyncSocket(server, "sid")
    assert isinstance(sock.queue, asyncio.Queue)
    for name in ("poll", "_websocket_handler", "close", "closed", "closing", "upgraded"):
        assert hasattr(sock, name), name
    assert sock._websocket_handler.__self__ is sock
    # names of ours that python-socketio's managers do not already use for something else
    for ours in ("socket_opened", "queue_packets", "cut_off", "send_queue_limit"):
        assert not hasattr(socketio.AsyncRedisManager, ours), ours
    assert engineio.async_drivers.aiohttp.WebSocketResponse.__name__ == "WebSocketResponse"
    driver = websocket_driver(compression=False)
    assert issubclass(driver, engineio.async_drivers.aiohttp.WebSocket)



async def test_a_socket_leaves_exactly_its_rooms_on_disconnect(running: RunningApp) -> None:
    room_id = await _live_room(running)
    sio = running.app[AIRWAVE].signaling.sio
    staying = await _viewer(running, "stays", room_id, "websocket")
    leaving = await _viewer(running, "leaves", room_id, "websocket")
    leaving_sid = leaving.client.get_sid("/")
    assert set(sio.manager.get_rooms(leaving_sid, "/")) == {
        leaving_sid, "user:leaves", room_audience(room_id)}
    await leaving.close()
    async with asyncio.timeout(5):
        while ("/", leaving_sid) in sio.manager.rooms_of:  # noqa: ASYNC110 - polled state
            await asyncio.sleep(0.02)
    namespace_rooms = sio.manager.rooms["/"]
    assert all(leaving_sid not in members for members in namespace_rooms.values())
    assert "user:leaves" not in namespace_rooms and leaving_sid not in namespace_rooms
    staying_sid = staying.client.get_sid("/")
    assert list(namespace_rooms[room_audience(room_id)]) == [staying_sid]
    await sio.emit("chat:message", {"roomId": room_id, "seq": 1}, to=room_audience(room_id))
    await staying.wait("chat:message", lambda m: m["seq"] == 1)
    await staying.close()


async def _listener(app: RunningApp, user: str, room_id: str, caps: list[str] | None) -> Listener:
    client = socketio.AsyncClient(reconnection=False)
    listener = Listener(client)
    batches: list[Any] = []
    listener.events["batch"] = batches

    @client.on("batch")
    async def on_batch(items: Any) -> None:
        batches.append(items)

    auth: dict[str, Any] = {"token": app.token(user)}
    if caps is not None:
        auth["caps"] = caps
    await client.connect(app.url, auth=auth, transports=["websocket"], wait_timeout=5)
    ack = await listener.call("stream:join", {"roomId": room_id})
    assert ack["roomId"] == room_id, ack
    return listener


async def test_a_large_room_batches_for_sockets_that_ask_and_keeps_order(make_settings) -> None:
    app = await start_app(make_settings(socketio_large_room="3", socketio_batch_interval="0.05",
                                        chat_delivery_rate="0"))
    listeners: list[Listener] = []
    try:
        room_id = await _live_room(app)
        sio = app.app[AIRWAVE].signaling.sio
        batcher = await _listener(app, "batcher", room_id, ["batch"])
        plain = await _listener(app, "plain", room_id, None)
        odd = await _listener(app, "odd", room_id, "batch")  # type: ignore[arg-type] - not a list
        listeners = [batcher, plain, odd]
        coalesced_before = COALESCED.labels("chat:message")._value.get()
        for n in range(3):  # real chat: stored, then delivered through the batch
            ack = await batcher.call("chat:send", {"roomId": room_id, "text": f"m{n}",
                                                   "clientId": f"c{n}"})
            assert "seq" in ack, ack
        for n in range(3, 6):
            await sio.emit("chat:message", {"roomId": room_id, "clientId": f"c{n}"},
                           to=room_audience(room_id))
        await sio.emit("stream:viewers", {"roomId": room_id, "count": 7}, to=room_audience(room_id))
        await sio.emit("stream:viewers", {"roomId": room_id, "count": 8}, to=room_audience(room_id))
        # not batched: it goes out after what the room holds, never before
        await sio.emit("stream:started", {"roomId": room_id, "streamId": "s"},
                       to=room_audience(room_id))
        wanted = [f"c{n}" for n in range(6)]
        for listener in (plain, odd):
            await listener.wait("stream:started")
            assert [m["clientId"] for m in listener.events["chat:message"]] == wanted
            assert [v["count"] for v in listener.events["stream:viewers"]] == [8]  # the last
            assert listener.arrivals["chat:message"][-1] <= listener.arrivals["stream:started"][0]
            assert listener.events["batch"] == []
        await batcher.wait("stream:started")
        items = [item for batch in batcher.events["batch"] for item in batch]
        assert [i["data"]["clientId"] for i in items if i["event"] == "chat:message"] == wanted
        assert [i["data"]["count"] for i in items if i["event"] == "stream:viewers"] == [8]
        assert batcher.events["chat:message"] == []  # all of it came inside batches
        assert COALESCED.labels("chat:message")._value.get() == coalesced_before + 6
    finally:
        for listener in listeners:
            await listener.close()
        await app.server.close()


async def test_a_large_room_samples_chat_beyond_its_rate_but_stores_it(make_settings) -> None:
    app = await start_app(make_settings(socketio_large_room="2", socketio_batch_interval="0.05",
                                        chat_delivery_rate="2"))
    listeners: list[Listener] = []
    try:
        room_id = await _live_room(app)
        first = await _listener(app, "first", room_id, None)
        second = await _listener(app, "second", room_id, ["batch"])
        listeners = [first, second]
        sampled_before = SAMPLED_OUT._value.get()
        await asyncio.sleep(1.01 - time.monotonic() % 1)  # the start of a one-second window
        started = int(time.monotonic())
        for n in range(5):
            ack = await first.call("chat:send", {"roomId": room_id, "text": f"m{n}",
                                                 "clientId": f"c{n}"})
            assert "seq" in ack, ack
        windows = int(time.monotonic()) - started + 1
        await asyncio.sleep(0.3)
        delivered = [m["clientId"] for m in first.events["chat:message"]]
        sampled = SAMPLED_OUT._value.get() - sampled_before
        assert len(delivered) + sampled == 5 and delivered == sorted(delivered)
        assert len(delivered) <= 2 * windows
        if windows == 1:
            assert delivered == ["c0", "c1"] and sampled == 3
        status, page = await rest(app, "GET", f"/api/v1/rooms/{room_id}/messages?limit=10", "host")
        assert status == 200 and [m["text"] for m in page["messages"]] == [f"m{n}" for n in range(5)]
    finally:
        for listener in listeners:
            await listener.close()
        await app.server.close()


async def test_a_sockets_acks_are_written_at_once_when_nothing_is_ahead(running: RunningApp) -> None:
    """direct_sender: the CONNECT and stream:join acks go out as frames written at once (no
    trip through the writer's queue), and behind a queued broadcast they wait their turn."""
    room_id = await _live_room(running)
    sio = running.app[AIRWAVE].signaling.sio
    raw = await StalledSocket.open(running.url)
    queued: list[str] = []
    try:
        here = raw.writer.get_extra_info("sockname")
        eio_socket = next(s for s in sio.eio.sockets.values()
                          if s.airwave_transport.get_extra_info("peername") == here)
        put = eio_socket.queue.put_nowait

        def counted(pkt: Any) -> None:
            queued.append(pkt.encode() if pkt is not None else "")
            put(pkt)

        eio_socket.queue.put_nowait = counted
        eio_socket.queue.put = lambda pkt: asyncio.sleep(0, counted(pkt))  # type: ignore[method-assign]
        sid = await raw.join(running.token("acked"), room_id)
        assert sid and queued == [], queued  # CONNECT and the join ack: straight to the transport
        # a packet already queued: the next one queues behind it, and arrives after it
        from engineio import packet as eio_packet

        eio_socket.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, '2["first"]'))
        await eio_socket.send(eio_packet.Packet(eio_packet.MESSAGE, '2["second"]'))
        assert queued == ['42["first"]', '42["second"]'], queued
        assert await raw.expect('42["first"]') == '42["first"]'  # then the second: order kept
        assert await raw.expect('42["second"]') == '42["second"]'
    finally:
        raw.close()
