"""HMAC-SHA256 over ``"<timestamp>.<raw body>"``, the same in both directions.

The signature header carries one ``sha256=<hex>`` per valid secret, comma
separated (``sha256=<new>,sha256=<old>`` while a secret rotates); a receiver
accepts the request when any of them matches any secret it holds.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

SCHEME = "sha256="
MAX_SIGNATURES = 8


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<body>")>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SCHEME + mac.hexdigest()


def signature_header(secrets: Iterable[str], timestamp: str, body: bytes) -> str:
    """One signature per secret, comma separated, in the order given."""
    return ",".join(signature(secret, timestamp, body) for secret in secrets if secret)


def signature_matches(secrets: Iterable[str], timestamp: str, header: str, body: bytes) -> bool:
    """True when one of the header's signatures (at most ``MAX_SIGNATURES``) is the
    HMAC of one of ``secrets``; compared in constant time."""
    offered = [part.strip().lower() for part in header.split(",") if part.strip()][:MAX_SIGNATURES]
    matched = False
    for secret in secrets:
        if not secret:
            continue
        expected = signature(secret, timestamp, body).encode()
        for candidate in offered:
            # No early exit: every pair is compared, so timing says nothing of which matched.
            matched |= hmac.compare_digest(expected, candidate.encode())
    return matched
