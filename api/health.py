"""Liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio

from aiohttp import web

from api.components import AIRWAVE
from api.errors import REQUEST_ID_KEY, json_response
from api.metrics import metrics
from api.routing import ApiRoutes

routes = ApiRoutes("health")


@routes.get("/health/liveness", summary="The process is up", auth=False)
async def liveness(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get(
    "/health/readiness",
    summary="The database and, when configured, Redis are reachable",
    auth=False,
    responses={200: "ready", 503: "a dependency is unreachable"},
)
async def readiness(request: web.Request) -> web.Response:
    airwave = request.app[AIRWAVE]
    checks: dict[str, str] = {}
    failed: list[str] = []

    async def check(name: str, probe) -> None:  # type: ignore[no-untyped-def]
        try:
            await asyncio.wait_for(probe(), timeout=3)
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready
            checks[name] = f"failed: {str(exc) or type(exc).__name__}"
            failed.append(name)

    async def database() -> None:
        await airwave.db.ping()
        if not airwave.migrated.is_set():
            raise RuntimeError("schema migrations not applied yet")

    await check("database", database)
    if airwave.redis is not None:
        await check("redis", airwave.redis.ping)
    status = 503 if failed else 200
    body = {"status": "ready" if not failed else "unavailable", "checks": checks}
    if failed:
        body.update(
            code="dependency_unavailable",
            message=f"not ready: {', '.join(failed)} unreachable",
            requestId=request.get(REQUEST_ID_KEY, ""),
        )
        body["status"] = 503
    return json_response(body, status=status)


routes.get("/metrics", summary="Prometheus metrics", auth=False)(metrics)


@routes.get("/api/v1/openapi.json", summary="This document", auth=False)
async def openapi_json(request: web.Request) -> web.Response:
    return json_response(request.app[AIRWAVE].openapi)
