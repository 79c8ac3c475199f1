"""A schema-driven fuzz of the whole HTTP API from its own OpenAPI document:
no input gets a 5xx, and every error has the standard shape (issue 15.11).

Hypothesis draws path parameters, query strings, tokens (none, a user's, an
admin's, garbage) and bodies (from each operation's request schema, or any
JSON, or bytes). A few examples per operation keep it to seconds per backend.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import Settings
from tests.conftest import start_app

SHAPE = {"status", "code", "message", "requestId"}
EXAMPLES_PER_OPERATION = 25
# Engine.IO's own protocol, and the web app's vendored bundle (503 until `npm ci` has run)
SKIPPED = re.compile(r"^/socket\.io/|^/vendor/")
QUERY_NAMES = ["limit", "cursor", "before", "after", "status", "type", "userId"]

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that fit ``schema`` (roughly: types, enums, properties), or near misses."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of(*(from_schema({**schema, "type": k}) for k in kind))
    if kind == "object":
        properties = {k: from_schema(v) for k, v in schema.get("properties", {}).items()}
        required = [k for k in schema.get("required", []) if k in properties]
        return st.fixed_dictionaries(
            {k: properties[k] for k in required},
            optional={k: v for k, v in properties.items() if k not in required},
        )
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=3)
    return {
        "string": st.text(max_size=40),
        "integer": st.integers(),
        "number": st.integers() | st.floats(allow_nan=False),
        "boolean": st.booleans(),
        "null": st.none(),
    }.get(kind, ANY_JSON)


def _fill_path(path: str, values: list[str]) -> str:
    parts = iter(values)
    return re.sub(r"\{[^}]+\}", lambda _: quote(next(parts), safe=""), path)


def fuzz(url: str, document: dict[str, Any], tokens: list[str | None]) -> list[str]:
    """Every operation, EXAMPLES_PER_OPERATION draws; the failures, as lines."""
    host, port = url.removeprefix("http://").split(":")
    failures: list[str] = []
    seen: list[int] = []

    def request(method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection(host, int(port), timeout=20)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            connection.close()

    def run_operation(method: str, path: str, content_type: str, bodies: st.SearchStrategy[bytes]) -> None:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(
            params=st.lists(st.text(min_size=1, max_size=24), min_size=path.count("{"),
                            max_size=path.count("{")),
            query=st.dictionaries(st.sampled_from(QUERY_NAMES), st.text(max_size=12), max_size=3),
            token=st.sampled_from(tokens),
            body=st.none() | bodies,
        )
        def one(params: list[str], query: dict[str, str], token: str | None, body: bytes | None) -> None:
            target = _fill_path(path, params) + ("?" + urlencode(query) if query else "")
            headers = {"Content-Type": content_type}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            status, returned_type, raw = request(method, target, body, headers)
            seen.append(status)
            if status >= 500:
                failures.append(f"{method} {target} -> {status} {raw[:200]!r}")
            elif status >= 400 and returned_type.startswith("application/json"):
                if set(json.loads(raw)) != SHAPE:
                    failures.append(f"{method} {target} -> {status} not the error shape {raw[:200]!r}")

        one()

    for path, operations in document["paths"].items():
        if SKIPPED.match(path):
            continue
        for method, operation in operations.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            content_type, media = next(iter(content.items()), ("application/json", {}))
            schema = media.get("schema", {})
            body_strategy = (
                st.text(max_size=200).map(str.encode) if not content_type.endswith("json")
                else from_schema(schema).map(lambda v: json.dumps(v).encode())
                | ANY_JSON.map(lambda v: json.dumps(v).encode())
                | st.binary(max_size=64)
            )

            run_operation(method.upper(), path, content_type, body_strategy)
    if not any(200 <= status < 300 for status in seen):
        failures.append("no request succeeded: the fuzz never got past the doors")
    return failures


# The app under test runs in this process and uses the random module (jitter,
# ids) while Hypothesis draws in another thread; Hypothesis then takes the
# server's draws for the strategy's and warns. The strategies use no random.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_no_input_gets_a_5xx(make_settings: Callable[..., Settings]) -> None:
    app = await start_app(make_settings(
        dev=True, webhook_secret="fuzz-secret",
        rate_limit_http=0, rate_limit_http_ip=0, rate_limit_events=0, rate_limit_actions=0,
    ))
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(app.url + "/api/v1/openapi.json") as r:
                document = await r.json()
        tokens = [None, "garbage", app.token("fuzz-user-q7"), app.token("fuzz-admin-q7", admin=True),
                  app.token("fuzz-pub-q7", room="*", publish=True, subscribe=True)]
        failures = await asyncio.to_thread(fuzz, app.url, document, tokens)
        assert failures == [], "\n".join(failures[:20])
    finally:
        await app.server.close()
