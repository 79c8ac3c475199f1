"""Bearer tokens on HTTP requests."""

from __future__ import annotations

from aiohttp import web

from api.errors import ApiError
from auth import Identity, TokenError, TokenService

TOKENS_KEY: web.AppKey[TokenService] = web.AppKey("tokens", TokenService)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def optional_identity(request: web.Request) -> Identity | None:
    token = bearer_token(request)
    if token is None:
        return None
    return require_identity(request)


def require_identity(request: web.Request) -> Identity:
    token = bearer_token(request)
    if token is None:
        raise ApiError(
            401, "missing_token", "an Authorization: Bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="airwave"'},
        )
    try:
        return request.app[TOKENS_KEY].verify(token)
    except TokenError as exc:
        raise ApiError(
            401, exc.code, exc.message,
            headers={"WWW-Authenticate": 'Bearer realm="airwave", error="invalid_token"'},
        ) from None


def require_admin(request: web.Request) -> Identity:
    identity = require_identity(request)
    if not identity.is_admin:
        raise ApiError(403, "forbidden", "this needs an admin token")
    return identity
