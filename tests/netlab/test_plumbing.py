"""The lab itself, without browsers: shapes on both ends of a link, traffic only inside the
lab's namespaces, an address that moves, and nothing left behind."""

from __future__ import annotations

import socket
import subprocess

import pytest

from bench.netlab import PEER_LINK, PREFIX, Netlab, Shape, socket_in, sweep

pytestmark = pytest.mark.netlab


def qdisc(namespace: str, link: str) -> str:
    return subprocess.run(["tc", "-n", namespace, "qdisc", "show", "dev", link], capture_output=True,
                          text=True, check=True).stdout


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def udp_roundtrip(lab: Netlab, peer_name: str) -> str:
    """One datagram from the peer to the server namespace's address on its link; its source address."""
    peer = lab.peers[peer_name]
    with socket_in(lab.server_namespace, socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket_in(peer.namespace, socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind((peer.server_address, 0))
        server.settimeout(5)
        client.sendto(b"netlab", server.getsockname())
        data, source = server.recvfrom(100)
        assert data == b"netlab"
        return source[0]


def test_each_direction_of_a_link_has_its_own_shape_and_lifts(lab: Netlab) -> None:
    peer = lab.add_peer("viewer", down=Shape(600, queue_ms=300), up=Shape(300))
    down, up = qdisc(lab.server_namespace, peer.server_link), qdisc(peer.namespace, PEER_LINK)
    assert "tbf" in down and "rate 600Kbit" in down
    assert "tbf" in up and "rate 300Kbit" in up

    lab.shape("viewer", down=Shape(1000))
    assert "rate 1Mbit" in qdisc(lab.server_namespace, peer.server_link)
    assert "tbf" not in qdisc(peer.namespace, PEER_LINK)

    lab.unshape("viewer")
    assert "tbf" not in qdisc(lab.server_namespace, peer.server_link)


def test_peers_reach_the_server_namespace_on_addresses_only_the_lab_has(lab: Netlab) -> None:
    lab.add_peer("a")
    lab.add_peer("b", down=Shape(600))
    assert udp_roundtrip(lab, "a") == "10.77.1.2"
    assert udp_roundtrip(lab, "b") == "10.77.2.2"
    host = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    assert "10.77." not in host


def test_a_moved_address_is_the_peers_new_source(lab: Netlab) -> None:
    lab.add_peer("mover")
    assert udp_roundtrip(lab, "mover") == "10.77.1.2"
    new = lab.move_address("mover")
    assert new == "10.77.1.3"
    assert udp_roundtrip(lab, "mover") == new
    peer_addresses = subprocess.run(["ip", "-n", lab.peers["mover"].namespace, "-4", "addr", "show", PEER_LINK],
                                    capture_output=True, text=True, check=True).stdout
    assert "10.77.1.2/" not in peer_addresses


def test_closing_a_lab_removes_its_namespaces_and_sweep_removes_orphans() -> None:
    lab = Netlab()
    lab.open()
    lab.add_peer("x")
    made = {lab.server_namespace, lab.peers["x"].namespace}
    assert made <= set(namespaces())
    lab.close()
    assert not made & set(namespaces())

    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = f"{PREFIX}-{gone.pid}-dead-srv"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    try:
        assert orphan in sweep()
    finally:
        subprocess.run(["ip", "netns", "del", orphan], capture_output=True)
    assert orphan not in namespaces()
