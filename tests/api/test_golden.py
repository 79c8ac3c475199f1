"""What clients see, pinned: the OpenAPI document, every HTTP error status and
code and every ack error code the code can produce, and how each face answers
each domain error. A change here is a change for clients: regenerate with
``AIRWAVE_UPDATE_GOLDEN=1`` only when that change is meant, and say so."""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from api import app as app_module
from api import inbox as api_inbox
from api.errors import refused
from api.openapi import build_document
from calls.calls import CallError
from gifts.gifts import GiftRefused
from gifts.payouts import MoneyRefused
from rooms.rooms import RoomError

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
# Every package of the server (the same set tests/test_architecture.py checks).
SOURCES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")


def _compare(name: str, actual: Any) -> None:
    path = GOLDEN / name
    text = json.dumps(actual, indent=2, sort_keys=True) + "\n"
    if os.environ.get("AIRWAVE_UPDATE_GOLDEN") or not path.exists():
        path.write_text(text)
    assert json.loads(path.read_text()) == actual, f"{name} changed: what clients see is different"


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _calls(names: set[str]) -> list[tuple[str, list[Any], str]]:
    """Every call of one of ``names`` in the server's source: (name, literal args, file)."""
    found = []
    for package in SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(
                        func, ast.Attribute) else ""
                    if name in names:
                        found.append((name, [_literal(a) for a in node.args], str(path.relative_to(ROOT))))
    return found


def _codes(name: str, position: int) -> list[Any]:
    return sorted({tuple(a[: position + 1]) if position else a[0] for n, a, _ in _calls({name})
                   if len(a) > position and all(isinstance(x, (str, int)) for x in a[: position + 1])},
                  key=str)


def test_openapi_document() -> None:
    document = build_document([f.routes for f in app_module.FEATURES], "golden")
    _compare("openapi.json", document)


def test_error_codes_in_the_code() -> None:
    http = sorted({f"{a[0]} {a[1]}" for n, a, _ in _calls({"ApiError", "WebhookRejected", "error_response"})
                   if len(a) >= 2 and isinstance(a[0], int) and isinstance(a[1], str)})
    http_in_requests = sorted({f"{a[1]} {a[2]}" for n, a, _ in _calls({"error_response"})
                               if len(a) >= 3 and isinstance(a[1], int) and isinstance(a[2], str)})
    acks = sorted({a[0] for n, a, _ in _calls({"SignalError"}) if a and isinstance(a[0], str)})
    domain = {
        "RoomError": [list(p) for p in _codes("RoomError", 1)],
        "CallError": _codes("CallError", 0),
        "GiftRefused": sorted(set(_codes("GiftRefused", 0)) | set(_codes("refuse", 0))),
        "MoneyRefused": _codes("MoneyRefused", 0),
    }
    _compare("error_codes.json", {"http": sorted(set(http) | set(http_in_requests)), "acks": acks,
                                  "domain": domain})


# How each HTTP face answers each domain error: code -> status (api/errors.py's
# one table by category; the inbox's routes answer bad input as 422).
HTTP_FACES: dict[str, tuple[str, Callable[[Any], int]]] = {
    "api.rooms": ("RoomError", lambda e: refused(e).status),
    "api.inbox": ("RoomError", lambda e: api_inbox._refused(e).status),
    "api.calls": ("CallError", lambda e: refused(e).status),
    "api.gifts": ("GiftRefused", lambda e: refused(e).status),
    "api.payouts": ("MoneyRefused", lambda e: refused(e).status),
}


def _domain_errors(kind: str) -> list[Any]:
    data = json.loads((GOLDEN / "error_codes.json").read_text())["domain"][kind]
    if kind == "RoomError":
        return [RoomError(k, c, "m") for k, c in data]
    make = {"CallError": CallError, "GiftRefused": GiftRefused, "MoneyRefused": MoneyRefused}[kind]
    return [make(c, "m") for c in data]


@pytest.mark.parametrize("face", sorted(HTTP_FACES))
def test_domain_errors_over_http(face: str) -> None:
    kind, status_of = HTTP_FACES[face]
    prefix: Callable[[Any], str] = (lambda e: f"{e.category}:") if kind == "RoomError" else (lambda e: "")
    table = {f"{prefix(e)}{e.code}": status_of(e) for e in _domain_errors(kind)}
    _compare(f"http_{face}.json", table)
