"""The web app's HTTP face: the page, its files, the demo sign-in and who is online;
demo sign-in exists in development only."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import aiohttp
import pytest
import socketio

from api.webapp import SOCKET_IO_PATH
from auth import TokenService
from config import Settings
from tests.conftest import RunningApp, start_app

from .browser import ensure_socket_io_bundle


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """The demo sign-in these tests use exists in development mode only (``--dev``)."""
    return make_settings(dev=True)


async def test_page_and_its_files_are_served(running: RunningApp) -> None:
    ensure_socket_io_bundle()
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            html = await r.text()
        assert '<script type="module" src="/static/js/main.js">' in html
        for path in ("/static/js/main.js", "/static/js/whip.js", "/static/app.css", SOCKET_IO_PATH):
            async with http.get(running.url + path) as r:
                assert r.status == 200, path
                body = await r.text()
                assert body.strip(), path
        async with http.get(running.url + SOCKET_IO_PATH) as r:
            assert "javascript" in r.content_type
            assert "export" in await r.text()  # an ES module the page imports
        async with http.get(running.url + "/static/../config/settings.py") as r:
            assert r.status in (403, 404)


async def test_openapi_documents_the_app_and_demo_sign_in(running: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/api/v1/openapi.json") as r:
            paths = (await r.json())["paths"]
    assert "get" in paths["/"]
    assert "get" in paths[SOCKET_IO_PATH]
    assert "post" in paths["/api/v1/dev/token"]
    assert "get" in paths["/api/v1/dev/online"]


async def test_dev_token_is_a_demo_user_with_publish_and_subscribe_and_welcome_coins(running: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(running.url + "/api/v1/dev/token", json={"name": "  Ada   Lovelace "}) as r:
            assert r.status == 200
            body = await r.json()
        async with http.post(running.url + "/api/v1/dev/token", json={"name": "Ada Lovelace"}) as r:
            again = await r.json()
        auth = {"Authorization": f"Bearer {body['token']}"}
        async with http.get(running.url + "/api/v1/wallet", headers=auth) as r:
            wallet = await r.json()
    assert body["name"] == "Ada Lovelace"
    assert body["userId"].startswith("demo-Ada-Lovelace-")
    assert again["userId"] != body["userId"]  # every sign-in is a new demo user
    identity = TokenService(running.settings).verify(body["token"])
    assert identity.user_id == body["userId"]
    assert identity.name == "Ada Lovelace"
    assert identity.can_publish("any-room") and identity.can_subscribe("any-room")
    assert identity.grants.room == "*"
    assert not identity.is_admin
    assert body["coins"] == 100
    assert wallet["coins"] == 100


async def test_dev_token_refuses_a_missing_or_long_name(running: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        for payload in ({}, {"name": ""}, {"name": "   "}, {"name": 7}, {"name": "x" * 41}):
            async with http.post(running.url + "/api/v1/dev/token", json=payload) as r:
                assert r.status == 400, payload
                error = await r.json()
                assert error["code"] == "bad_name"
                assert error["requestId"]
        async with http.post(running.url + "/api/v1/dev/token", json=["name"]) as r:
            assert r.status == 400
            assert (await r.json())["code"] == "bad_json"
        async with http.post(running.url + "/api/v1/dev/token", data=b"{not json",
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert (await r.json())["code"] == "bad_json"


async def test_online_lists_everyone_else_with_a_socket(running: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        tokens = {}
        for name in ("Ann", "Ben"):
            async with http.post(running.url + "/api/v1/dev/token", json={"name": name}) as r:
                tokens[name] = await r.json()
        async with http.get(running.url + "/api/v1/dev/online") as r:
            assert r.status == 401
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(running.url, auth={"token": tokens["Ben"]["token"]}, transports=["websocket"],
                             wait_timeout=5)
        try:
            for who, expected in (("Ann", [{"userId": tokens["Ben"]["userId"], "name": "Ben"}]), ("Ben", [])):
                headers = {"Authorization": f"Bearer {tokens[who]['token']}"}
                async with http.get(running.url + "/api/v1/dev/online", headers=headers) as r:
                    assert r.status == 200
                    assert (await r.json())["users"] == expected
        finally:
            await client.disconnect()


async def test_no_demo_sign_in_without_dev(make_settings: Callable[..., Settings]) -> None:
    """The default on either backend, with or without a JWT secret of its own."""
    running = await start_app(make_settings())
    try:
        token = running.token("carol", publish=True, subscribe=True, room="*")
        async with aiohttp.ClientSession() as http:
            async with http.post(running.url + "/api/v1/dev/token", json={"name": "Eve"}) as r:
                assert r.status == 404
                assert "token" not in await r.json()
            async with http.get(running.url + "/api/v1/dev/online",
                                headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 404
            async with http.get(running.url + "/") as r:
                assert r.status == 200  # the app itself is served; its sign-in says why it cannot sign in
    finally:
        await running.server.close()


async def test_security_headers_fit_the_page(running: RunningApp) -> None:
    """Issue 15.13: a CSP that lets the page's own scripts run and nothing else, never framed."""
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/") as r:
            html = await r.text()
            policy = r.headers["Content-Security-Policy"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "no-referrer"
            assert r.headers["X-Frame-Options"] == "DENY"
        async with http.get(running.url + "/api/v1/rooms") as r:
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert "Content-Security-Policy" not in r.headers  # JSON needs none
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    for body in re.findall(r"<script>(.*?)</script>", html, flags=re.S):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in directives["script-src"]
    host = running.url.removeprefix("http://")
    assert f"ws://{host}" in directives["connect-src"]
