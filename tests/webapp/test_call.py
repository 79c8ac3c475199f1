"""Two browser pages call each other: ring, answer, both decode the other's video, the
warning, Extend pressed on both moves the end, and hanging up shows ``hangup`` on both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from config import Settings
from tests.conftest import start_app

from .browser import (
    chromium,
    ensure_socket_io_bundle,
    new_page,
    screenshot,
    sign_in,
    text_of,
    until,
)

REMOTE_FRAMES = """async () => {
  const call = window.airwave && window.airwave.call;
  if (!call || !call.connection) return 0;
  let frames = 0;
  (await call.connection.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
  });
  return frames;
}"""
REMOTE_WIDTH = "() => (document.querySelector('#call-remote') || {}).videoWidth > 0"  # a function: no eval under the CSP


async def test_two_pages_call_extend_and_hang_up(make_settings: Callable[..., Settings]) -> None:
    ensure_socket_io_bundle()
    # the warning comes 4 s after the answer, the call would end at 10 s; Extend adds 30 s
    settings = make_settings(dev=True, call_duration=10, call_warning_before=6, call_extension=30, ring_timeout=15)
    running = await start_app(settings)
    errors: list[str] = []
    try:
        async with asyncio.timeout(60):
            async with chromium() as browser:
                url = running.url
                caller = await new_page(browser, url, errors)
                callee = await new_page(browser, url, errors)
                await sign_in(callee, url, "Cleo", "#/live")  # another page: the call brings her over
                await sign_in(caller, url, "Carl", "#/call")
                button = await caller.wait_for_selector("#online-users li:has-text('Cleo') button")
                await screenshot(caller, "call-online")
                await button.click()
                await callee.wait_for_selector("#incoming:not([hidden]) #call-answer")
                assert "Carl is calling you" in await text_of(callee, "#incoming-from")
                await screenshot(callee, "call-incoming")
                await callee.click("#call-answer")

                for page in (caller, callee):
                    await page.wait_for_function(REMOTE_WIDTH)
                for page in (caller, callee):
                    first = await page.evaluate(REMOTE_FRAMES)
                    await until(lambda p=page, f=first: _frames_above(p, f + 5), 10, "remote frames to grow")

                for page in (caller, callee):
                    await page.wait_for_selector("#call-warning:not([hidden])", timeout=10_000)
                    assert "Extend" in await text_of(page, "#call-warning")
                ends_at = float(await caller.get_attribute("#call-remaining", "data-ends-at"))
                await screenshot(caller, "call-warning")

                await caller.click("#call-extend")
                await callee.wait_for_selector("#extend-status:has-text('wants more time')")
                assert ends_at == float(await caller.get_attribute("#call-remaining", "data-ends-at"))
                await callee.click("#call-extend")
                for page in (caller, callee):
                    await until(lambda p=page: _ends_after(p, ends_at + 25), 5, "the end to move by 30 s")
                    assert await page.is_hidden("#call-warning")

                await callee.click("#call-hangup")
                for page in (caller, callee):
                    await page.wait_for_selector("#call-ended:not([hidden])")
                    assert await page.get_attribute("#call-ended", "data-reason") == "hangup"
                    assert "hangup" in await text_of(page, "#call-ended")
                await screenshot(callee, "call-ended")
        assert not errors, errors
    finally:
        await running.server.close()


async def _frames_above(page, than: int) -> bool:
    return await page.evaluate(REMOTE_FRAMES) > than


async def _ends_after(page, when: float) -> bool:
    value = await page.get_attribute("#call-remaining", "data-ends-at")
    return bool(value) and float(value) > when
