"""Which remote ICE candidates a session checks: the server must not be made to
send STUN anywhere an offer names.

Per session at most ``max_remote_candidates`` are taken (the offer's and the
trickled ones together). Dropped: addresses in ``ice_candidate_deny`` (by
default unspecified, multicast, broadcast and link-local), loopback unless the
server itself announces a loopback address, and the server's own addresses at
its own ports (its ICE sockets, its HTTP and STUN ports). Private ranges stay
allowed: LAN clients and namespace tests use them.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Iterable
from typing import Any

from config import Settings

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CandidatePolicy:
    def __init__(self, settings: Settings) -> None:
        self.limit = settings.max_remote_candidates
        self.denied: list[IpNetwork] = [ipaddress.ip_network(n, strict=False) for n in settings.ice_candidate_deny]
        self.server_ports = {p for p in (settings.port, settings.stun_port) if p}
        self.announced_loopback = any(ipaddress.ip_address(a).is_loopback for a in settings.ice_addresses)
        self._taken: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def admits(self, session: Any, candidate: Any, own: Iterable[Any]) -> bool:
        """Whether ``session`` checks ``candidate`` (aiortc RTCIceCandidate); ``own``:
        the session's local candidates. Counts the candidates it admits."""
        taken = self._taken.get(session, 0)
        if taken >= self.limit:
            return False
        try:
            address = ipaddress.ip_address(candidate.ip)
        except ValueError:
            return False  # mDNS names and the like: nothing to check
        if any(address in network for network in self.denied):
            return False
        own = list(own)
        if address.is_loopback and not (
            self.announced_loopback or any(_is_loopback(c.ip) for c in own)
        ):
            return False
        own_addresses = {c.ip for c in own}
        own_ports = self.server_ports | {c.port for c in own}
        if candidate.ip in own_addresses and candidate.port in own_ports:
            return False
        self._taken[session] = taken + 1
        return True


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
