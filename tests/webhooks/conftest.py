"""An app whose outgoing webhooks go to a real receiver started first, with a
rotating pair of secrets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from config import Settings
from tests.conftest import RunningApp, start_app
from tests.gifts.gift_clients import CATALOG_JSON, WEBHOOK_SECRET
from tests.webhooks.receiver import Receiver

OUT_SECRETS = ("whsec-new-" + "n" * 20, "whsec-old-" + "o" * 20)


def webhook_env(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {
        "webhook_urls": json.dumps([{"url": receiver.url, "secrets": list(OUT_SECRETS)}]),
        "webhook_poll_interval": 0.1,
        "webhook_secret": WEBHOOK_SECRET,
        "gifts": CATALOG_JSON,
        **extra,
    }


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = await Receiver(OUT_SECRETS).start()
    yield hooks
    await hooks.close()


@pytest.fixture
async def make_hooked_app(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> AsyncIterator[Callable[..., Any]]:
    apps: list[RunningApp] = []

    async def build(**overrides: Any) -> RunningApp:
        app = await start_app(make_settings(**webhook_env(receiver, **overrides)))
        apps.append(app)
        return app

    yield build
    for app in apps:
        await app.server.close()


@pytest.fixture
async def hooked(make_hooked_app: Callable[..., Any]) -> RunningApp:
    return await make_hooked_app()
