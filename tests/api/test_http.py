"""The HTTP face: error shape, request ids, readiness, OpenAPI completeness."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from api.openapi import openapi_path
from config import load_settings
from tests.conftest import RunningApp, base_env, free_port, start_app


async def test_unknown_route_has_the_error_shape(running: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/no/such/thing", headers={"X-Request-Id": "req-1"}) as r:
            body = await r.json()
            assert r.status == 404
            assert r.headers["X-Request-Id"] == "req-1"
    assert body == {"status": 404, "code": "not_found", "message": body["message"], "requestId": "req-1"}


async def test_insane_request_id_is_replaced(running: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/health/liveness", headers={"X-Request-Id": "x" * 500}) as r:
            assert r.status == 200
            assert 0 < len(r.headers["X-Request-Id"]) <= 64


async def test_readiness_and_metrics(running: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/health/readiness") as r:
            body = await r.json()
            assert r.status == 200, body
            assert body["checks"]["database"] == "ok"
            if running.settings.redis_url:
                assert body["checks"]["redis"] == "ok"
        async with http.get(running.url + "/metrics") as r:
            text = await r.text()
    assert 'method="GET",route="/health/readiness",status="200"}' in text


@pytest.mark.parametrize("backend", ["postgres"])
async def test_readiness_is_503_when_the_database_is_unreachable(tmp_path, backend) -> None:
    env = base_env(tmp_path)
    env["AIRWAVE_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    app = await start_app(load_settings(env))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(app.url + "/health/readiness") as r:
                body = await r.json()
                assert r.status == 503
            async with http.get(app.url + "/health/liveness") as r:
                assert r.status == 200
    finally:
        await app.server.close()
    assert body["code"] == "dependency_unavailable"
    assert "database" in body["message"] and body["checks"]["database"].startswith("failed")


async def test_readiness_names_redis_when_it_is_unreachable(tmp_path) -> None:
    env = base_env(tmp_path)
    env["AIRWAVE_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    app = await start_app(load_settings(env))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(app.url + "/health/readiness") as r:
                body = await r.json()
                assert r.status == 503
    finally:
        await app.server.close()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("failed")


async def test_openapi_documents_every_route(running: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/api/v1/openapi.json") as r:
            doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    served = set()
    for route in running.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if not path or path.startswith("/socket.io") or route.method in ("HEAD", "*"):
            continue
        if "prefix" in info:  # static files
            continue
        served.add((openapi_path(path), route.method.lower()))
    assert served - documented == set()
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["summary"] and op["responses"]


async def test_nodes_route_is_admin_only_and_lists_this_node(running: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/api/v1/nodes", headers={"Authorization": f"Bearer {running.token('u')}"}) as r:
            assert r.status == 403
        admin = {"Authorization": f"Bearer {running.token('ops', admin=True)}"}
        for _ in range(50):  # with Redis the heartbeat lands within a moment
            async with http.get(running.url + "/api/v1/nodes", headers=admin) as r:
                assert r.status == 200
                nodes = (await r.json())["nodes"]
            if nodes:
                break
            await asyncio.sleep(0.1)
        async with http.get(running.url + "/metrics") as r:
            text = await r.text()
    from api.components import AIRWAVE

    me = running.app[AIRWAVE].node_id
    assert me in [n["id"] for n in nodes]
    assert f'airwave_http_requests_total{{node="{me}",method="GET"' in text


def test_node_label_goes_on_airwave_samples_only() -> None:
    from api.metrics import with_node_label

    text = 'airwave_x 1.0\nairwave_y{a="b c"} 2.0\nprocess_cpu 3.0\n# HELP airwave_x x\n'
    assert with_node_label(text, "n1") == (
        'airwave_x{node="n1"} 1.0\nairwave_y{node="n1",a="b c"} 2.0\nprocess_cpu 3.0\n# HELP airwave_x x\n'
    )
