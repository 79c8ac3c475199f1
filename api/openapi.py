"""The OpenAPI 3.1 document, assembled from every module's ApiRoutes."""

from __future__ import annotations

import re
from typing import Any

from api.routing import ApiRoutes

ERROR_SCHEMA = {
    "type": "object",
    "required": ["status", "code", "message", "requestId"],
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "requestId": {"type": "string"},
    },
}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _split_params(path: str) -> tuple[str, list[str]]:
    """aiohttp's ``{name:regex}`` (the regex may hold braces) becomes ``{name}``."""
    out: list[str] = []
    names: list[str] = []
    i = 0
    while i < len(path):
        if path[i] != "{":
            out.append(path[i])
            i += 1
            continue
        depth, j = 1, i + 1
        while j < len(path) and depth:
            depth += {"{": 1, "}": -1}.get(path[j], 0)
            j += 1
        inner = path[i + 1 : j - 1]
        name = _NAME.match(inner)
        names.append(name.group(0) if name else inner)
        out.append("{" + names[-1] + "}")
        i = j
    return "".join(out), names


def openapi_path(path: str) -> str:
    return _split_params(path)[0]


def build_document(tables: list[ApiRoutes], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for table in tables:
        for op in table.operations:
            path = openapi_path(op.path)
            entry: dict[str, Any] = {
                "summary": op.summary,
                "tags": [op.tag],
                "operationId": f"{op.method.lower()}_{op.handler.__name__}",
                "responses": {},
            }
            params = _split_params(op.path)[1]
            if params:
                entry["parameters"] = [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in params
                ]
            if op.request:
                entry["requestBody"] = {
                    "required": True,
                    "content": {ct: {"schema": schema} for ct, schema in op.request.items()},
                }
            for status, description in sorted(op.responses.items()):
                response: dict[str, Any] = {"description": description}
                if status >= 400:
                    response["content"] = {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    }
                elif status < 300 and op.response_schema is not None:
                    response["content"] = {"application/json": {"schema": op.response_schema}}
                entry["responses"][str(status)] = response
            if op.auth:
                entry["security"] = [{"bearer": []}]
                entry["responses"].setdefault(
                    "401",
                    {
                        "description": "missing or invalid token",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                )
            paths.setdefault(path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "airwave",
            "version": version,
            "description": "Realtime media and signaling server: WHIP/WHEP, calls, rooms, chat, gifts.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
