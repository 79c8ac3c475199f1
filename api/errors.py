"""One error shape for every HTTP error, and the middleware that guarantees it.

``{"status": 404, "code": "room_not_found", "message": "...", "requestId": "..."}``

A domain refusal (:class:`rooms.errors.DomainError`) that a handler lets
through is answered here by its category (:data:`HTTP_STATUS`).

Every request gets an id (from a sane ``X-Request-Id`` header, or a new one),
echoed in the ``X-Request-Id`` response header and in the log line.
Unexpected exceptions are logged with the id and answered 500 without internals.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from api.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS
from rooms.errors import Category, DomainError

log = logging.getLogger("airwave.http")

REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("request_id", str)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class ApiError(Exception):
    """Raise anywhere in a handler to answer with the standard error shape."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# A domain refusal's category as an HTTP status: the one table of the HTTP face.
HTTP_STATUS: dict[Category, int] = {
    Category.INVALID: 400,
    Category.FORBIDDEN: 403,
    Category.NOT_FOUND: 404,
    Category.CONFLICT: 409,
    Category.UNPROCESSABLE: 422,
    Category.RATE_LIMITED: 429,
    Category.UPSTREAM: 502,
    Category.UNAVAILABLE: 503,
}


def refused(exc: DomainError, *, invalid_status: int = 400) -> ApiError:
    """The HTTP answer to a domain refusal (a route whose bad input is 422 says so)."""
    status = invalid_status if exc.category is Category.INVALID else HTTP_STATUS[exc.category]
    return ApiError(status, exc.code, exc.message)


def strict_dumps(value: object) -> str:
    """JSON as RFC 8259 has it: NaN or Infinity raise rather than go out."""
    return json.dumps(value, allow_nan=False)


def json_response(
    data: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Every JSON answer of the API goes out through here."""
    return web.json_response(data, status=status, headers=headers, dumps=strict_dumps)


def error_response(
    request: web.Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    request_id = request.get(REQUEST_ID_KEY, "")
    body = {"status": status, "code": code, "message": message, "requestId": request_id}
    return web.Response(
        status=status,
        text=strict_dumps(body),
        content_type="application/json",
        headers=headers,
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    503: "unavailable",
}


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _SANE_ID.match(incoming) else secrets.token_hex(8)
    request[REQUEST_ID_KEY] = request_id
    started = time.perf_counter()
    try:
        try:
            request.url  # noqa: B018 - a Host header yarl cannot parse fails here, not in a handler
        except ValueError:
            raise ApiError(400, "bad_host", "the Host header is not a host name") from None
        if "\x00" in request.path or "\x00" in request.query_string or "%00" in request.raw_path:
            raise ApiError(400, "bad_request", "NUL characters are not allowed in the path or query")
        response = await handler(request)
    except ApiError as exc:
        response = error_response(request, exc.status, exc.code, exc.message, exc.headers)
    except DomainError as exc:
        response = error_response(request, HTTP_STATUS[exc.category], exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.text is None or exc.text.startswith(str(exc.status)) else exc.text
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        response = error_response(request, exc.status, code, message or exc.reason, headers)
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = error_response(request, 500, "internal_error", "internal server error")
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    elapsed = time.perf_counter() - started
    route = _route_label(request)
    HTTP_REQUESTS.labels(request.method, route, str(response.status)).inc()
    HTTP_REQUEST_SECONDS.labels(request.method, route).observe(elapsed)
    log.info(
        "%s %s %s %.1fms",
        request.method,
        request.path,
        response.status,
        elapsed * 1000,
        extra={"request_id": request_id, "status": response.status},
    )
    return response
