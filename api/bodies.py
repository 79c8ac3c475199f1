"""Reading request bodies: one way for every route."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.errors import ApiError


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or 400 ``bad_json``."""
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "bad_json", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return body

