"""Prometheus metrics of the HTTP face, and the /metrics route.

Other packages define their own ``airwave_*`` metrics in the default registry;
/metrics exposes them all together with the process collector's CPU and memory.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

HTTP_REQUESTS = Counter(
    "airwave_http_requests_total", "HTTP requests by method, route and status", ["method", "route", "status"]
)
HTTP_REQUEST_SECONDS = Histogram(
    "airwave_http_request_seconds",
    "HTTP request handling time by method and route",
    ["method", "route"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def with_node_label(text: str, node: str) -> str:
    """Every ``airwave_*`` sample gets ``node="<id>"``, so that one Prometheus
    query can tell the nodes of a cluster apart (process_* metrics are left as
    the client library writes them)."""
    label = 'node="' + node.replace("\\", "\\\\").replace('"', '\\"') + '"'
    out = []
    for line in text.splitlines():
        if line.startswith("airwave_"):
            brace, space = line.find("{"), line.find(" ")
            if brace != -1 and brace < space:
                line = f"{line[: brace + 1]}{label},{line[brace + 1 :]}"
            else:
                line = f"{line[:space]}{{{label}}}{line[space:]}"
        out.append(line)
    return "\n".join(out) + "\n"


NODE_KEY: web.AppKey[str] = web.AppKey("node_id", str)


ASYNCIO_TASKS = Gauge("airwave_asyncio_tasks", "asyncio tasks alive in this process (read at each scrape)")


async def metrics(request: web.Request) -> web.Response:
    ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
    text = generate_latest(REGISTRY).decode()
    body = with_node_label(text, request.app[NODE_KEY]).encode()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
