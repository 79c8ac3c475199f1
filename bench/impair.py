"""Random loss and delay on a lab link, in user space (this kernel has no netem).

An impaired peer (``Netlab.add_peer(name, impaired=Impairments(...))``) is joined
to the server namespace by two TUN devices instead of a veth pair: ``p<N>`` in
the server namespace and ``srv`` in the peer's, both opened by this process.
A :class:`TunBridge` thread carries every IP packet from one to the other,
drops each with the probability of its direction and holds the rest for the
direction's delay (plus a uniform jitter, which may reorder). tbf shapes still
apply: a TUN device has an egress qdisc like a veth (down: the server's end).

The random generator is seeded, so a run drops the same packets of the same
sequence. Counters per direction: :meth:`TunBridge.stats`.
"""

from __future__ import annotations

import fcntl
import heapq
import os
import random
import select
import struct
import threading
import time
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65_536
MAX_HELD = 20_000  # packets waiting out their delay; beyond that, dropped (bounded memory)


@dataclass
class Impairment:
    """One direction: drop each packet with probability ``loss``, delay the rest."""

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0 or self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("loss in 0..1, delay and jitter >= 0")


@dataclass
class Impairments:
    """Both directions of a peer's link: ``down`` toward the peer, ``up`` from it."""

    down: Impairment = field(default_factory=Impairment)
    up: Impairment = field(default_factory=Impairment)
    seed: int = 1


def open_tun(name: str) -> int:
    """A TUN device (IP packets, no header) in the calling thread's network namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


class TunBridge:
    """Carries packets between the server-side and the peer-side TUN device, impaired."""

    def __init__(self, server_fd: int, peer_fd: int, impairments: Impairments) -> None:
        self.server_fd = server_fd
        self.peer_fd = peer_fd
        self.impairments = impairments
        self._random = random.Random(impairments.seed)
        self._counts = {"down": [0, 0], "up": [0, 0]}  # packets seen, dropped
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="tun-bridge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stats(self) -> dict[str, dict[str, int]]:
        return {direction: {"packets": seen, "dropped": dropped}
                for direction, (seen, dropped) in self._counts.items()}

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for fd in (self.server_fd, self.peer_fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        held: list[tuple[float, int, int, bytes]] = []  # (due, order, out fd, packet)
        order = 0
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = min(0.1, max(0.0, held[0][0] - now)) if held else 0.1
            ready, _, _ = select.select([self.server_fd, self.peer_fd, self._wake_r], [], [], timeout)
            for fd in ready:
                if fd == self._wake_r:
                    continue
                direction, out = ("down", self.peer_fd) if fd == self.server_fd else ("up", self.server_fd)
                impairment = getattr(self.impairments, direction)
                for packet in self._drain(fd):
                    counts = self._counts[direction]
                    counts[0] += 1
                    if self._random.random() < impairment.loss or len(held) >= MAX_HELD:
                        counts[1] += 1
                        continue
                    jitter = self._random.uniform(-impairment.jitter_ms, impairment.jitter_ms)
                    due = time.monotonic() + max(0.0, impairment.delay_ms + jitter) / 1000
                    order += 1
                    heapq.heappush(held, (due, order, out, packet))
            now = time.monotonic()
            while held and held[0][0] <= now:
                _, _, out, packet = heapq.heappop(held)
                try:
                    os.write(out, packet)
                except OSError:
                    pass  # the device is going away, or its queue is full: a lost packet

    @staticmethod
    def _drain(fd: int) -> list[bytes]:
        packets = []
        for _ in range(256):
            try:
                packets.append(os.read(fd, MAX_PACKET))
            except (BlockingIOError, OSError):
                break
        return packets
