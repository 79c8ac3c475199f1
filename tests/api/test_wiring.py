"""The wiring as a contract: the features' order, their typed services, and the
media engine's observers set once."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import fields

import pytest

from api import app as app_module
from api import calls, gifts, rooms, webhook_events
from api.app import FEATURES, bounded_step, check_features
from api.components import AIRWAVE, Services
from tests.conftest import RunningApp


def test_the_features_order_satisfies_what_each_needs() -> None:
    check_features(FEATURES)


@pytest.mark.parametrize(
    ("moved", "after"), [(webhook_events, gifts), (rooms, calls)], ids=["outbox-after-gifts", "rooms-after-calls"]
)
def test_a_feature_moved_after_one_that_needs_it_is_refused(moved: object, after: object) -> None:
    order = [f for f in FEATURES if f is not moved]
    order.insert(order.index(after) + 1, moved)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs"):
        check_features(order)


def test_a_misspelt_service_is_refused() -> None:
    services = Services()
    with pytest.raises(AttributeError):
        services.room = None  # type: ignore[attr-defined]


async def test_every_service_is_built_and_the_engine_observers_fan_out(running: RunningApp) -> None:
    airwave = running.app[AIRWAVE]
    missing = [f.name for f in fields(Services) if getattr(airwave.services, f.name) is None]
    assert not missing
    observers = airwave.engine_events
    assert len(observers.session_closed) == 2  # the media face and the cluster's edges
    assert len(observers.publisher_started) == 1 and len(observers.renegotiation_needed) == 1
    engine = airwave.media
    assert engine.on_session_closed is not None and engine.on_session_closed.__qualname__.startswith("_fan_out")


async def test_every_shutdown_and_cleanup_step_is_bounded(running: RunningApp) -> None:
    app = running.app
    for hooks in (app.on_shutdown, app.on_cleanup):
        assert hooks and all(getattr(hook, "__wrapped__", None) for hook in hooks), list(hooks)


async def test_a_shutdown_step_that_hangs_is_left_behind_and_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "SHUTDOWN_STEP_TIMEOUT", 0.2)

    async def waits_for_ever(app: object) -> None:
        await asyncio.Event().wait()

    async def fails(app: object) -> None:
        raise RuntimeError("a step's own error")

    with caplog.at_level(logging.ERROR, logger="airwave"):
        await asyncio.wait_for(bounded_step(waits_for_ever)(None), 5)  # type: ignore[arg-type]
    assert "waits_for_ever did not finish within" in caplog.text
    with pytest.raises(RuntimeError, match="own error"):
        await bounded_step(fails)(None)  # type: ignore[arg-type]
