"""Failures are told to the person in words, never as a blank page."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from config import Settings
from tests.conftest import start_app

from .browser import chromium, ensure_socket_io_bundle, new_page, screenshot, sign_in, text_of


async def test_camera_refused_and_unknown_room_are_explained(make_settings: Callable[..., Settings]) -> None:
    ensure_socket_io_bundle()
    running = await start_app(make_settings(dev=True))
    errors: list[str] = []
    try:
        async with asyncio.timeout(45):
            # without --use-fake-ui-for-media-stream nobody grants the camera: it is refused
            async with chromium(grant_media=False) as browser:
                page = await new_page(browser, running.url, errors)
                await sign_in(page, running.url, "Dora", "#/live")
                await page.wait_for_selector("#camera-error")
                notice = await text_of(page, "#notice")
                assert "Camera or microphone access was refused" in notice
                assert await page.is_disabled("#go-live")
                assert await page.query_selector("#camera-retry")
                await screenshot(page, "camera-refused")

                await page.goto(running.url + "/#/watch/no-such-room")
                await page.wait_for_selector("#page-error")
                assert "no such room" in (await text_of(page, "#page-error")).lower()
        assert not errors, errors
    finally:
        await running.server.close()
