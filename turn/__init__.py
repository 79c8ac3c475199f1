"""Embedded STUN binding server and TURN REST credentials for coturn.

- :class:`StunServer`: RFC 8489 Binding over UDP, rate-limited per source.
- :class:`IceServerProvider`: the ICE servers (STUN and TURN with fresh
  credentials) for ``RTCConfiguration`` and for WHIP/WHEP ``Link`` headers.
"""

from turn.credentials import (
    IceServerProvider,
    TurnCredential,
    format_uri_host,
    mint_turn_credential,
    quote_header_value,
    turn_password,
    turn_username,
)
from turn.stun_server import STUN_REQUESTS, SourceRateLimiter, StunServer, binding_response

__all__ = [
    "STUN_REQUESTS",
    "IceServerProvider",
    "SourceRateLimiter",
    "StunServer",
    "TurnCredential",
    "binding_response",
    "format_uri_host",
    "mint_turn_credential",
    "quote_header_value",
    "turn_password",
    "turn_username",
]
