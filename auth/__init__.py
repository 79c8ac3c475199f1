"""Access tokens (JWT): claims, grants, verify, mint."""

from auth.tokens import Grants, Identity, TokenError, TokenService

__all__ = ["Grants", "Identity", "TokenError", "TokenService"]
