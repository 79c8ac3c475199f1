"""Reading request bodies: one way for every route.

JSON bodies are UTF-8 (RFC 8259), whatever ``charset`` the request names; the
non-standard constants ``NaN`` and ``Infinity``, numbers that overflow to
infinity, strings holding NUL (``\\u0000``, which PostgreSQL cannot store) and
nesting deeper than Python can decode are refused as 400 ``bad_json`` like any
other malformed body.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from api.errors import ApiError
from signaling.server import contains_nul


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON; ValueError for anything that is not, or that holds a NUL."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        if "\\u0000" in text and contains_nul(value):
            raise ValueError("strings may not contain NUL")
        return value
    except (RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or 400 ``bad_json``."""
    try:
        body = parse_json(await request.read())
    except ValueError:
        raise ApiError(400, "bad_json", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return body
