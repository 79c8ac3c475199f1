"""The user-space impairment (bench/impair.py): a peer joined by two bridged TUN devices loses
the share of packets its direction is told to, and only in that direction."""

from __future__ import annotations

import socket
import time

import pytest

from bench.impair import Impairment, Impairments
from bench.netlab import Netlab, socket_in

pytestmark = pytest.mark.netlab
DATAGRAMS = 400


def send_and_count(lab: Netlab, peer_name: str, direction: str) -> int:
    """DATAGRAMS numbered datagrams across the peer's link, paced; how many distinct ones arrive."""
    peer = lab.peers[peer_name]
    if direction == "down":
        (src_ns, dst_ns, dst_addr) = (lab.server_namespace, peer.namespace, peer.address)
    else:
        (src_ns, dst_ns, dst_addr) = (peer.namespace, lab.server_namespace, peer.server_address)
    with socket_in(dst_ns, socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket_in(src_ns, socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind((dst_addr, 0))
        receiver.setblocking(False)
        port = receiver.getsockname()[1]
        seen: set[int] = set()
        for number in range(DATAGRAMS):
            sender.sendto(number.to_bytes(4, "big"), (dst_addr, port))
            time.sleep(0.001)
            seen |= _drain(receiver)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            seen |= _drain(receiver)
            time.sleep(0.05)
        return len(seen)


def _drain(receiver: socket.socket) -> set[int]:
    got = set()
    while True:
        try:
            got.add(int.from_bytes(receiver.recv(16), "big"))
        except BlockingIOError:
            return got


def test_loss_applies_to_its_direction_only_and_changes_mid_run(lab: Netlab) -> None:
    lab.add_peer("lossy", impaired=Impairments(down=Impairment(loss=0.3, delay_ms=20), seed=7))

    down = send_and_count(lab, "lossy", "down")
    assert DATAGRAMS * 0.55 < down < DATAGRAMS * 0.85, down  # 30 % drawn at random: about 280
    assert send_and_count(lab, "lossy", "up") == DATAGRAMS
    stats = lab.impairment_stats("lossy")
    assert stats["down"]["dropped"] >= DATAGRAMS - down
    assert stats["up"]["dropped"] == 0

    lab.impair("lossy", down=Impairment(loss=1.0))
    assert send_and_count(lab, "lossy", "down") == 0
    lab.impair("lossy")
    assert send_and_count(lab, "lossy", "down") == DATAGRAMS
