"""Route tables that carry their own OpenAPI description.

Each api module declares ``routes = ApiRoutes()`` and decorates its handlers
with ``@routes.get(path, summary=..., ...)``. The app adds every table to its
router, and ``openapi.json`` is assembled from the same declarations, so a
route cannot exist without being documented.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: bool = True
    request: dict[str, Any] | None = None  # {"content-type": schema}
    responses: dict[int, str] = field(default_factory=dict)
    response_schema: dict[str, Any] | None = None


class ApiRoutes:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        auth: bool = True,
        request: dict[str, Any] | None = None,
        responses: dict[int, str] | None = None,
        response_schema: dict[str, Any] | None = None,
    ) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    summary=summary,
                    tag=self.tag,
                    auth=auth,
                    request=request,
                    responses=responses or {200: "OK"},
                    response_schema=response_schema,
                )
            )
            return handler

        return decorate

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)

    def options(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("OPTIONS", path, **kw)

    def add_to(self, app: web.Application) -> None:
        for op in self.operations:
            app.router.add_route(op.method, op.path, op.handler)
