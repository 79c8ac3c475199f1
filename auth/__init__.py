"""Access tokens (JWT): claims, grants, verify, mint."""

from auth.tokens import (
    ROOM_ID,
    ROOM_ID_PATTERN,
    Grants,
    Identity,
    RevocationList,
    TokenError,
    TokenService,
)

__all__ = ["ROOM_ID", "ROOM_ID_PATTERN", "Grants", "Identity", "RevocationList", "TokenError", "TokenService"]
