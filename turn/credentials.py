"""TURN REST API credentials for coturn, and the ICE server list clients get.

coturn started with ``use-auth-secret`` and ``static-auth-secret=S`` accepts
``username = "<unix expiry>:<user id>"`` with
``password = base64(HMAC-SHA1(S, username))`` until the expiry passes
(draft-uberti-behave-turn-rest). airwave signs with the first of
``turn_secrets``; the others only document a rotation in progress, since coturn
is the one that checks (give it every secret still in use).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config import Settings

# What may appear inside <...> of a Link header and in an RTCIceServer URL.
_URI_SAFE = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+$")  # RFC 3986 characters
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})$")
_MAX_USER_ID_BYTES = 256


@dataclass(frozen=True)
class TurnCredential:
    """One TURN REST credential: give ``username`` and ``credential`` to the client."""

    username: str
    credential: str
    expires_at: int  # unix time, seconds


def turn_username(user_id: str, expires_at: int) -> str:
    if not isinstance(user_id, str):
        raise TypeError("user_id must be a string")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in user_id):
        raise ValueError("user_id must not contain control characters")
    if len(user_id.encode("utf-8")) > _MAX_USER_ID_BYTES:
        raise ValueError(f"user_id must be at most {_MAX_USER_ID_BYTES} bytes")
    return f"{int(expires_at)}:{user_id}"


def turn_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), as coturn computes it."""
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint_turn_credential(
    secret: str, user_id: str, ttl: int, *, now: float | None = None
) -> TurnCredential:
    """A credential for ``user_id`` valid for ``ttl`` seconds from ``now``."""
    if not secret:
        raise ValueError("a TURN secret is needed to sign credentials")
    if ttl <= 0:
        raise ValueError("ttl must be greater than 0")
    expires_at = int(time.time() if now is None else now) + int(ttl)
    username = turn_username(user_id, expires_at)
    return TurnCredential(username, turn_password(secret, username), expires_at)


def format_uri_host(host: str) -> str:
    """``host`` as it goes in a stun:/turn: URI: IPv6 literals in brackets.

    Raises ValueError for anything that is neither a hostname nor an IP address
    (so that a hostile Host header cannot inject into a Link header).
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        if host != bare or not _HOSTNAME.match(host) or ".." in host:
            raise ValueError(f"not a hostname or IP address: {host!r}") from None
        return host.lower()
    return f"[{ip}]" if ip.version == 6 else str(ip)


def quote_header_value(value: str) -> str:
    """An RFC 9110 quoted-string (used by RFC 8288 Link parameters)."""
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise ValueError("header values must not contain control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class IceServerProvider:
    """Builds the ICE servers a client should use, from the settings.

    - ``ice_servers(user_id, stun_host)``: the list for ``RTCConfiguration.iceServers``
      (browser shape), also the body of ``GET /api/v1/ice-servers``;
    - ``link_headers(user_id, stun_host)``: the ``Link`` header values of a WHIP or
      WHEP 201 (RFC 9725 section 4.6), one per URL;
    - ``ttl``: how long minted TURN credentials stay valid, in seconds.

    ``stun_host`` is how the client reached us (host only, no port; an IPv6
    literal with or without brackets); it is used for the embedded STUN server's
    URL, which is left out when ``stun_port`` is 0 or ``stun_host`` is empty.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._stun_port = settings.stun_port
        self._turn_urls = tuple(settings.turn_urls)
        self._secrets = tuple(settings.turn_secrets)
        self._ttl = int(settings.turn_ttl)
        self._clock = clock
        for url in self._turn_urls:
            if not url.startswith(("turn:", "turns:")) or not _URI_SAFE.match(url):
                raise ValueError(f"TURN URL {url!r} is not a turn: or turns: URI")
        if self._turn_urls and not self._secrets:
            raise ValueError("TURN URLs are set but there is no secret to sign credentials")

    @property
    def ttl(self) -> int:
        return self._ttl

    @property
    def stun_enabled(self) -> bool:
        return self._stun_port != 0

    @property
    def turn_enabled(self) -> bool:
        return bool(self._turn_urls)

    @property
    def turn_urls(self) -> tuple[str, ...]:
        return self._turn_urls

    def stun_urls(self, stun_host: str | None = None) -> list[str]:
        if not self.stun_enabled or not stun_host:
            return []
        return [f"stun:{format_uri_host(stun_host)}:{self._stun_port}"]

    def credential(self, user_id: str) -> TurnCredential | None:
        """A fresh credential signed with the first secret; None when TURN is off."""
        if not self.turn_enabled:
            return None
        return mint_turn_credential(self._secrets[0], user_id, self._ttl, now=self._clock())

    def ice_servers(self, user_id: str, stun_host: str | None = None) -> list[dict[str, Any]]:
        servers: list[dict[str, Any]] = []
        stun_urls = self.stun_urls(stun_host)
        if stun_urls:
            servers.append({"urls": stun_urls})
        cred = self.credential(user_id)
        if cred is not None:
            servers.append(
                {
                    "urls": list(self._turn_urls),
                    "username": cred.username,
                    "credential": cred.credential,
                }
            )
        return servers

    def link_headers(self, user_id: str, stun_host: str | None = None) -> list[str]:
        """``Link`` values, e.g. ``<stun:h:3478>; rel="ice-server"``; one header each."""
        links = [f'<{url}>; rel="ice-server"' for url in self.stun_urls(stun_host)]
        cred = self.credential(user_id)
        if cred is not None:
            params = (
                f"; username={quote_header_value(cred.username)}"
                f"; credential={quote_header_value(cred.credential)}"
                '; credential-type="password"'
            )
            links += [f'<{url}>; rel="ice-server"{params}' for url in self._turn_urls]
        return links


__all__ = [
    "IceServerProvider",
    "TurnCredential",
    "format_uri_host",
    "mint_turn_credential",
    "quote_header_value",
    "turn_password",
    "turn_username",
]
