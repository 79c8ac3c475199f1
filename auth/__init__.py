"""Access tokens (JWT): claims, grants, verify, mint."""

from auth.tokens import Grants, Identity, RevocationList, TokenError, TokenService

__all__ = ["Grants", "Identity", "RevocationList", "TokenError", "TokenService"]
