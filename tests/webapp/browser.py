"""The system Chromium driven by Playwright, for the web app's tests.

Flags from /work/shared/INTEROP.md: headless, fake camera and microphone (a
test pattern and a beep) granted without a prompt, and loopback ICE
candidates (the test server offers 127.0.0.1 only). A fresh profile per
launch; no browser is ever downloaded.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
WEB_DIR = REPO / "web"
ARTIFACTS = REPO / "test-artifacts" / "webapp"
BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
]
GRANT_MEDIA = "--use-fake-ui-for-media-stream"


def ensure_socket_io_bundle() -> None:
    """The npm step of `make run`, when web/node_modules is missing."""
    bundle = WEB_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
    if not bundle.is_file():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB_DIR, check=True, timeout=180)


@asynccontextmanager
async def chromium(*, grant_media: bool = True) -> AsyncIterator[Browser]:
    flags = BASE_FLAGS + ([GRANT_MEDIA] if grant_media else [])
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True, timeout=20_000)
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Browser, base_url: str, errors: list[str]) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda exc: errors.append(f"{base_url}: {exc}"))
    page.on("console", lambda msg: _console_error(msg.type, msg.text, errors))
    page.on("response", lambda r: r.status >= 400 and print(f"browser: {r.status} {r.request.method} {r.url}"))
    return page


def _console_error(kind: str, text: str, errors: list[str]) -> None:
    """Script errors fail the test; a refused request (409 for a gift too dear) is the page's to show."""
    if kind == "error" and not text.startswith("Failed to load resource"):
        errors.append(f"console: {text}")


async def sign_in(page: Page, base_url: str, name: str, path: str = "") -> None:
    await page.goto(f"{base_url}/{path}")
    await page.fill("#signin-name", name)
    await page.click("#signin-button")
    await page.wait_for_selector("#me-name")


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return path


async def until(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")


async def text_of(page: Page, selector: str) -> str:
    element = await page.query_selector(selector)
    return (await element.inner_text()).strip() if element else ""
