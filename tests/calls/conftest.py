"""A running app with short call timings, and parties to call with."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import RunningApp, start_app

from .call_clients import TIMINGS, Parties


@pytest.fixture
async def make_call_app(make_settings: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """Start an app with the short call timings (plus overrides); all closed at the end."""
    apps: list[RunningApp] = []

    async def build(**overrides: Any) -> RunningApp:
        app = await start_app(make_settings(**{**TIMINGS, **overrides}))
        apps.append(app)
        return app

    yield build
    for app in apps:
        await app.server.close()
    await asyncio.sleep(0)


@pytest.fixture
async def call_app(make_call_app: Callable[..., Any]) -> RunningApp:
    return await make_call_app()


@pytest.fixture
async def parties(call_app: RunningApp) -> AsyncIterator[Parties]:
    connected = Parties(call_app)
    yield connected
    await connected.close()
