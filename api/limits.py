"""Abuse limits that need to know who asks: the client's address, rate limits on
the HTTP API per user and per address (429 with Retry-After), and how many
media sessions a user or an address holds (and how many are still connecting).

Defaults are generous (phones behind a carrier NAT share one address); 0 turns
a limit off. See docs/security.md.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from aiohttp import web

from api.components import AIRWAVE
from api.errors import ApiError
from auth import TokenError
from config import Settings
from rooms.rate_limit import RateLimits
from sfu import MediaEngine

RETRY_AFTER_SECONDS = 5


def client_address(request: web.Request, settings: Settings) -> str:
    """The peer's address; with AIRWAVE_TRUST_FORWARDED_FOR, the address the
    nearest proxy put last in X-Forwarded-For."""
    if settings.trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(forwarded))
        except ValueError:
            pass
    return request.remote or ""


LIMITED_PREFIXES = ("/api/", "/whip/", "/whep/")


async def check_rate(limits: RateLimits, name: str, key: str) -> None:
    """429 ``rate_limited`` with Retry-After when ``key`` used up limit ``name``."""
    if not await limits.allow(name, key):
        seconds = limits.retry_after(name)
        raise ApiError(
            429, "rate_limited", f"too many requests: try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


@web.middleware
async def rate_limit_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The HTTP API per client address and, with a valid token, per user."""
    if request.method == "OPTIONS" or not request.path.startswith(LIMITED_PREFIXES):
        return await handler(request)
    airwave = request.app[AIRWAVE]
    await check_rate(airwave.limits, "http_ip", client_address(request, airwave.settings))
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        try:
            identity = airwave.tokens.verify(header[7:].strip())
        except TokenError:
            pass  # the route answers 401 itself
        else:
            if not identity.is_admin:
                await check_rate(airwave.limits, "http", identity.user_id)
    return await handler(request)


class SessionLimitExceeded(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MediaQuota:
    """Media sessions per user and per client address, and those still connecting.

    Users are counted from the engine's sessions (their owner), so WHIP/WHEP and
    ``sfu:*`` count together; addresses from the WHIP/WHEP sessions this face
    created. A creation in flight holds a reservation, so a burst cannot slip by.
    """

    def __init__(self, engine: MediaEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.address_of: dict[str, str] = {}  # session id -> client address
        self._reserved_users: Counter[str] = Counter()
        self._reserved_addresses: Counter[str] = Counter()

    def check(self, user: str, address: str) -> None:
        """SessionLimitExceeded when ``user`` ("" anonymous) or ``address`` ("" unknown) is full."""
        s = self.settings
        by_user = [x for x in self.engine.sessions() if user and x.owner == user]
        by_address = [x for x in self.engine.sessions() if address and self.address_of.get(x.id) == address]
        for who, sessions, reserved, total, connecting in (
            ("this user", by_user, self._reserved_users[user] if user else 0,
             s.max_sessions_per_user, s.max_connecting_per_user),
            ("this address", by_address, self._reserved_addresses[address] if address else 0,
             s.max_sessions_per_ip, s.max_connecting_per_ip),
        ):
            if total and len(sessions) + reserved >= total:
                raise SessionLimitExceeded("too_many_sessions", f"{who} holds {total} media sessions already")
            pending = sum(1 for x in sessions if x.state != "connected") + reserved
            if connecting and pending >= connecting:
                raise SessionLimitExceeded(
                    "too_many_connecting", f"{who} has {connecting} media sessions still connecting"
                )

    @contextmanager
    def reserve(self, user: str, address: str) -> Iterator[None]:
        """Check, then hold a place while the session is being created."""
        self.check(user, address)
        self._reserved_users[user] += 1
        self._reserved_addresses[address] += 1
        try:
            yield
        finally:
            self._reserved_users[user] -= 1
            self._reserved_addresses[address] -= 1
            if self._reserved_users[user] <= 0:
                del self._reserved_users[user]
            if self._reserved_addresses[address] <= 0:
                del self._reserved_addresses[address]

    def opened(self, session_id: str, address: str) -> None:
        if address:
            self.address_of[session_id] = address

    def closed(self, session_id: str) -> None:
        self.address_of.pop(session_id, None)
