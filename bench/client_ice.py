"""ICE for the bench's own WebRTC clients: which local addresses they gather.

aioice gathers host candidates from every interface except loopback; the
bench gathers exactly the addresses it is given (``--ice-address``, default
127.0.0.1), so a local run never sends anything off the machine and a remote
run uses the interface that reaches the server.
"""

from __future__ import annotations

import aioice.ice


def use_host_addresses(addresses: list[str]) -> None:
    """Make every aiortc/aioice object of this process gather only ``addresses``."""
    chosen = [a for a in addresses if a]
    if not chosen:
        raise ValueError("at least one ICE address is needed")

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return list(chosen)

    aioice.ice.get_host_addresses = get_host_addresses
