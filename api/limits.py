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
    created. A creation in flight holds a reservation, so a burst cannot slip by
    (the engine may list a session in flight already: a user's count is the
    larger of the two views, never their sum).
    """

    def __init__(self, engine: MediaEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.opened_by: dict[str, tuple[str, str]] = {}  # session id -> (user, client address)
        self._reserved_users: Counter[str] = Counter()
        self._reserved_addresses: Counter[str] = Counter()

    def check(self, user: str, address: str) -> None:
        """SessionLimitExceeded when ``user`` ("" anonymous) or ``address`` ("" unknown) is full."""
        s = self.settings
        sessions = self.engine.sessions()
        states = {x.id: x.state for x in sessions}
        if user:
            engine_view = [x.state for x in sessions if x.owner == user]
            opened = [states[i] for i, (u, _) in self.opened_by.items() if u == user and i in states]
            reserved = self._reserved_users[user]
            self._check("this user", s.max_sessions_per_user, s.max_connecting_per_user,
                        max(len(engine_view), len(opened) + reserved),
                        max(_connecting(engine_view), _connecting(opened) + reserved))
        if address:
            opened = [states[i] for i, (_, a) in self.opened_by.items() if a == address and i in states]
            reserved = self._reserved_addresses[address]
            self._check("this address", s.max_sessions_per_ip, s.max_connecting_per_ip,
                        len(opened) + reserved, _connecting(opened) + reserved)

    @staticmethod
    def _check(who: str, total_limit: int, connecting_limit: int, total: int, connecting: int) -> None:
        if total_limit and total >= total_limit:
            raise SessionLimitExceeded("too_many_sessions", f"{who} holds {total_limit} media sessions already")
        if connecting_limit and connecting >= connecting_limit:
            raise SessionLimitExceeded(
                "too_many_connecting", f"{who} has {connecting_limit} media sessions still connecting"
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

    def opened(self, session_id: str, user: str, address: str) -> None:
        if user or address:
            self.opened_by[session_id] = (user, address)

    def closed(self, session_id: str) -> None:
        self.opened_by.pop(session_id, None)


def _connecting(states: list[str]) -> int:
    return sum(1 for state in states if state != "connected")
