"""The gift suites run the shared ``running`` app with a webhook secret and a
catalog of odd prices (overriding the ``settings`` fixture of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from config import Settings
from tests.gifts.gift_clients import CATALOG_JSON, WEBHOOK_SECRET


@pytest.fixture
async def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(webhook_secret=WEBHOOK_SECRET, gifts=CATALOG_JSON, gift_creator_share=0.6)
