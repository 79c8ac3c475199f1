"""How an event reaches many sockets: once encoded, straight into each socket's bounded queue.

python-socketio's ``AsyncManager.emit`` encodes a broadcast once but then starts one
asyncio task per recipient (``_send_eio_packet``) and waits for them all; a room of
thousands pays that task per message per socket. ``FanoutManager.emit`` (for emits
without a callback, i.e. every broadcast) puts the one encoded Engine.IO packet into each
recipient's outgoing queue with ``put_nowait``: no task, no await per recipient.

Every queue is bounded (``socketio_send_queue``): a socket whose queue is full has fallen
behind (it stopped reading; its TCP window is shut and the writer waits on the drain), so it
is disconnected with the reason ``slow_consumer`` (logged and counted): what it missed costs
nobody else, and its memory stops at the bound.

Engine.IO's aiohttp driver opens its ``WebSocketResponse`` with permessage-deflate on,
which deflates every frame once per socket with its own compressor: the dearest part of a
broadcast. ``websocket_driver`` returns the driver class with compression as configured
(``socketio_ws_compression``, off by default: chat frames are small). It also gives the
socket's writer a cheaper ``poll``: Engine.IO's wraps every wait for the next packet in
``asyncio.wait_for``, which starts a task per wake-up (a quarter of a broadcast's CPU in a
profile); this one awaits the queue under ``asyncio.timeout`` and only when it is empty. And a
socket's own packets (acks) go out as a frame written at once when nothing is ahead of them
(``direct_sender``), as broadcasts do.

The python-socketio and python-engineio internals this relies on (``AsyncManager`` and
``AsyncPubSubManager.emit``/``get_participants``, ``eio.sockets``, ``AsyncSocket.queue``,
``AsyncSocket._websocket_handler`` bound to the socket, the ``_async['websocket']``
driver slot) are pinned by tests/signaling/test_fanout.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as engineio_aiohttp
from engineio.async_drivers.aiohttp import WebSocket as EngineIOWebSocket
from engineio.exceptions import QueueEmpty
from prometheus_client import Counter
from socketio import packet as sio_packet

log = logging.getLogger("airwave.signaling.fanout")

BROADCAST_DELIVERIES = Counter(
    "airwave_socketio_broadcast_deliveries_total",
    "Engine.IO packets queued to sockets by broadcasts (one per recipient)",
)
SLOW_CONSUMERS = Counter(
    "airwave_socketio_slow_consumers_total",
    "Sockets disconnected because their outgoing queue was full (slow_consumer)",
)

COALESCED = Counter(
    "airwave_socketio_coalesced_total",
    "Events of large rooms that reached batch-capable sockets inside a `batch` event",
    ["event"],
)
SAMPLED_OUT = Counter(
    "airwave_socketio_sampled_out_total",
    "Chat messages of large rooms not delivered (beyond chat_delivery_rate; still stored)",
)

SLOW_CONSUMER = "slow_consumer"
BATCH_CAPABILITY = "batch"
COALESCED_EVENTS = ("chat:message", "stream:viewers")  # the only events a large room batches
LAST_ONLY_EVENTS = ("stream:viewers",)  # a count: only the last of a tick matters


def _socket_transport(eio_socket: Any) -> asyncio.BaseTransport | None:
    return getattr(eio_socket, "airwave_transport", None)


def websocket_text_frame(packets: list[eio_packet.Packet]) -> bytes | None:
    """Unmasked, uncompressed, final WebSocket text frames (RFC 6455 5.2), one per text
    packet, back to back: the bytes every recipient of a broadcast gets. None if any packet
    is binary."""
    if not packets or any(p.binary for p in packets):
        return None
    return b"".join(_text_frame(p.encode().encode("utf-8")) for p in packets)


def _text_frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


POLLING_BATCH = 16  # python-engineio's clients refuse a payload of more packets


def queue_poller(eio_socket: Any, most: int = 0) -> Callable[[], Awaitable[list[eio_packet.Packet]]]:
    """``AsyncSocket.poll`` without a task per wait: the packets waiting, at least one and
    at most ``most`` (0: all); ``[]`` once the socket's queue carries its closing ``None``.
    Long-polling sockets get ``most=POLLING_BATCH``: a broadcast burst no longer yields
    between recipients, and python-engineio's client drops a payload of more than 16."""
    queue: asyncio.Queue[eio_packet.Packet | None] = eio_socket.queue
    server = eio_socket.server

    async def poll() -> list[eio_packet.Packet]:
        if queue.empty():
            eio_socket.airwave_writer_idle = True  # everything before was written
            try:
                async with asyncio.timeout(server.ping_interval + server.ping_timeout):
                    first = await queue.get()
            except TimeoutError:
                raise QueueEmpty() from None
            finally:
                eio_socket.airwave_writer_idle = False
        else:
            first = queue.get_nowait()
        queue.task_done()
        if first is None:
            return []
        packets = [first]
        while not queue.empty() and len(packets) != most:
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets

    return poll


def direct_sender(eio_socket: Any) -> Callable[[eio_packet.Packet], Awaitable[None]]:
    """``AsyncSocket.send`` that writes a text packet straight to the transport, as one
    WebSocket frame, when nothing is ahead of it (the writer idle, its queue empty, nothing
    buffered: the order is kept), instead of waking the socket's writer task for it; else
    Engine.IO's own ``send`` queues it. A connect's CONNECT and ``stream:join`` acks each
    cost a writer wake-up, a poll and aiohttp's frame writer without it."""
    queued_send = eio_socket.send

    async def send(pkt: eio_packet.Packet) -> None:
        transport = eio_socket.airwave_transport
        if (not pkt.binary and eio_socket.airwave_writer_idle and eio_socket.queue.empty()
                and not transport.is_closing() and not transport.get_write_buffer_size()):
            if await eio_socket.check_ping_timeout():
                transport.write(_text_frame(pkt.encode().encode("utf-8")))
            return
        await queued_send(pkt)

    return send


def websocket_driver(compression: bool) -> type[EngineIOWebSocket]:
    """Engine.IO's aiohttp WebSocket wrapper with permessage-deflate as asked, which also
    remembers the TCP transport on the Engine.IO socket (to cut off a slow consumer) and
    gives the socket's writer :func:`queue_poller`."""

    class WebSocket(EngineIOWebSocket):
        async def __call__(self, environ: dict[str, Any]) -> Any:
            request = environ["aiohttp.request"]
            # aiohttp's class as Engine.IO's driver imports it (signaling does not import aiohttp)
            self._sock = engineio_aiohttp.WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compression
            )
            await self._sock.prepare(request)
            self.environ = environ
            owner = getattr(self.handler, "__self__", None)  # the engineio AsyncSocket
            if owner is not None:
                owner.airwave_transport = request.transport
                owner.airwave_raw_frames = not compression
                owner.airwave_writer_idle = False
                owner.poll = queue_poller(owner)
                if not compression:
                    owner.send = direct_sender(owner)
            await self.handler(self)
            return self._sock

        async def send(self, message: str | bytes) -> None:
            if isinstance(message, bytes):
                await self._sock.send_bytes(message)
            else:
                await self._sock.send_str(message)

    return WebSocket


class FanoutManager(socketio.AsyncManager):
    """``AsyncManager`` whose callback-less emits queue one shared packet per recipient,
    and which knows each socket's rooms: python-socketio finds them on disconnect by testing
    every room of the namespace (each socket has its own, so N sockets leaving cost N x N)."""

    send_queue_limit = 256

    large_room = 0  # sockets of a room on this node from which its chat is coalesced; 0: never
    batch_interval = 0.05  # seconds between a large room's batches
    chat_delivery_rate = 0.0  # chat messages a second a large room delivers; 0: all

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rooms_of: dict[tuple[str, str], set[str | None]] = {}  # (namespace, sid) -> rooms
        self.batch_capable: set[str] = set()  # sids whose connect said caps: ["batch"]
        self.pending: dict[tuple[str, str], list[tuple[str, Any]]] = {}  # (ns, room) -> events
        self.chat_window: dict[tuple[str, str], tuple[int, int]] = {}  # -> (second, delivered)

    def basic_enter_room(self, sid: str, namespace: str, room: str | None,
                         eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self.rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)

    async def close_room_here(self, room: str, namespace: str = "/") -> None:
        """Close ``room`` on this node only, for a fact every node hears itself on the bus
        (a call ended): through the pub/sub manager each of N nodes would tell all N."""
        await socketio.AsyncManager.close_room(self, room, namespace)

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """Leave the socket's own rooms only (the rest as python-socketio does)."""
        self.batch_capable.discard(sid)
        for room in self.rooms_of.pop((namespace, sid), set()):
            super().basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        return [r for r in self.rooms_of.get((namespace, sid), ()) if r is not None]

    def socket_opened(self, eio_sid: str) -> None:
        """A new socket: while it long-polls, its polls hand out at most POLLING_BATCH packets."""
        eio_socket = self.server.eio.sockets.get(eio_sid)
        if eio_socket is not None and not eio_socket.upgraded:
            eio_socket.poll = queue_poller(eio_socket, POLLING_BATCH)

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   **kwargs: Any) -> None:
        if callback is not None:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                               callback=callback, to=to, **kwargs)
            return
        room = to or room
        if namespace not in self.rooms:
            return
        if self.large_room and isinstance(room, str) and room in self.rooms[namespace]:
            key = (namespace, room)
            if event in COALESCED_EVENTS and skip_sid is None and not isinstance(data, tuple):
                if len(self.rooms[namespace][room]) >= self.large_room:
                    self._hold(key, event, data)
                    return
            if key in self.pending:  # anything else to the room keeps its place after them
                self.flush(key)
        if isinstance(data, tuple):
            args = list(data)
        elif data is not None:
            args = [data]
        else:
            args = []
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
        if not isinstance(encoded, list):
            encoded = [encoded]
        packets = [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded]
        for p in packets:
            p.encode()  # fills encode_cache: every recipient's writer reuses the string
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        self.queue_packets(packets, (eio_sid for sid, eio_sid in
                                     self.get_participants(namespace, room) if sid not in skip))

    # -- large rooms ------------------------------------------------------------------

    def _hold(self, key: tuple[str, str], event: str, data: Any) -> None:
        """Keep an event of a large room for the room's next batch (sampling chat)."""
        if event == "chat:message" and self.chat_delivery_rate:
            second = int(time.monotonic())
            window, delivered = self.chat_window.get(key, (second, 0))
            if window != second:
                window, delivered = second, 0
            if delivered >= self.chat_delivery_rate:
                SAMPLED_OUT.inc()
                return
            self.chat_window[key] = (window, delivered + 1)
        events = self.pending.get(key)
        if events is None:
            events = self.pending[key] = []
            asyncio.get_running_loop().call_later(self.batch_interval, self.flush, key)
        if event in LAST_ONLY_EVENTS:
            events[:] = [e for e in events if e[0] != event]
        events.append((event, data))

    def _event_packets(self, namespace: str, event: str, data: Any) -> list[eio_packet.Packet]:
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, data]).encode()
        if not isinstance(encoded, list):
            encoded = [encoded]
        return [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded]

    def flush(self, key: tuple[str, str]) -> None:
        """Deliver a large room's held events: one ``batch`` event [{event, data}, ...] to
        the sockets that asked for it, each event in turn to the others."""
        events = self.pending.pop(key, None)
        if not events:
            return
        namespace, room = key
        if len(self.chat_window) > 10_000:
            self.chat_window.clear()
        batch = self._event_packets(
            namespace, "batch", [{"event": e, "data": d} for e, d in events])
        each = [p for e, d in events for p in self._event_packets(namespace, e, d)]
        capable, others = [], []
        for sid, eio_sid in self.get_participants(namespace, room):
            (capable if sid in self.batch_capable else others).append(eio_sid)
        if capable:
            self.queue_packets(batch, capable)
            for event, _ in events:
                COALESCED.labels(event).inc(len(capable))
        if others:
            self.queue_packets(each, others)

    def queue_packets(self, packets: list[eio_packet.Packet], eio_sids: Any) -> int:
        """Send ``packets`` to each Engine.IO socket: written at once as one shared WebSocket
        frame to a socket whose writer is idle and whose transport has nothing buffered, else
        queued behind what it has; sockets whose queue is full are cut off. How many sockets
        got them."""
        sockets = self.server.eio.sockets
        limit = self.send_queue_limit
        frame = websocket_text_frame(packets)
        queued = 0
        for eio_sid in eio_sids:
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed or socket.closing:
                continue
            queue = socket.queue
            transport = socket.__dict__.get("airwave_transport") if frame is not None else None
            if transport is not None and queue.empty() and socket.airwave_writer_idle:
                if (socket.airwave_raw_frames and not transport.is_closing()
                        and not transport.get_write_buffer_size()):
                    transport.write(frame)
                    queued += 1
                    continue
            if limit and queue.qsize() + len(packets) > limit:
                self.cut_off(socket)
                continue
            for p in packets:
                queue.put_nowait(p)
            queued += 1
        BROADCAST_DELIVERIES.inc(queued)
        return queued

    def cut_off(self, eio_socket: Any) -> None:
        """A slow consumer: drop its connection now (abort: its unsent frames are freed);
        Engine.IO then closes the socket and the disconnect hooks run."""
        if getattr(eio_socket, "airwave_cut_off", False):
            return
        eio_socket.airwave_cut_off = True
        SLOW_CONSUMERS.inc()
        log.warning("socket disconnected: %s", SLOW_CONSUMER,
                    extra={"eio_sid": eio_socket.sid, "reason": SLOW_CONSUMER,
                           "queued": eio_socket.queue.qsize()})
        transport = _socket_transport(eio_socket)
        if transport is not None:
            transport.abort()
        else:  # long-polling: no transport of its own; close the Engine.IO socket
            task = asyncio.get_running_loop().create_task(
                eio_socket.close(wait=False, abort=True))
            self._cutting.add(task)
            task.add_done_callback(self._cutting.discard)

    @property
    def _cutting(self) -> set[asyncio.Task[Any]]:
        tasks: set[asyncio.Task[Any]] | None = getattr(self, "_cut_tasks", None)
        if tasks is None:
            tasks = self._cut_tasks = set()
        return tasks


class FanoutRedisManager(socketio.AsyncRedisManager, FanoutManager):
    """The Redis manager with the same local delivery (``AsyncPubSubManager`` hands every
    emit it hears to ``FanoutManager.emit`` through ``super()``)."""
