"""The web app's socket announces the `batch` capability and unpacks a large room's `batch`
events to the listeners of each event, in order (api/static/js/socket.js)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from api.components import AIRWAVE
from config import Settings
from signaling.fanout import COALESCED
from tests.conftest import rest, start_app

from .browser import chromium, ensure_socket_io_bundle, new_page, sign_in

LISTEN_AND_JOIN = """async (roomId) => {
  const socket = await import("/static/js/socket.js");
  window.heard = [];
  await socket.listen("chat:message", (m) => window.heard.push(m.text));
  await socket.listen("stream:viewers", (v) => window.heard.push(`viewers ${v.count}`));
  return await socket.request("stream:join", { roomId });
}"""


async def test_the_web_app_unpacks_batches_in_order(make_settings: Callable[..., Settings]) -> None:
    ensure_socket_io_bundle()
    running = await start_app(make_settings(dev=True, socketio_large_room="1",
                                            socketio_batch_interval="0.2", chat_delivery_rate="0"))
    errors: list[str] = []
    try:
        async with asyncio.timeout(60):
            async with chromium(grant_media=False) as browser:
                page = await new_page(browser, running.url, errors)
                await sign_in(page, running.url, "Carol")
                status, room = await rest(running, "POST", "/api/v1/rooms", "host",
                                          json={"type": "live", "title": "batch", "public": True})
                assert status == 201, room
                joined = await page.evaluate(LISTEN_AND_JOIN, room["id"])
                assert joined["roomId"] == room["id"], joined
                signaling = running.app[AIRWAVE].signaling
                assert len(signaling.sio.manager.batch_capable) == 1  # the page asked for it
                sio, audience = signaling.sio, f"room:{room['id']}"
                coalesced = COALESCED.labels("chat:message")._value.get()
                for text in ("one", "two", "three"):  # inside one 200 ms tick: one batch
                    await sio.emit("chat:message", {"roomId": room["id"], "text": text}, to=audience)
                await sio.emit("stream:viewers", {"roomId": room["id"], "count": 4}, to=audience)
                await page.wait_for_function("() => window.heard.length >= 4")
                assert await page.evaluate("() => window.heard") == [
                    "one", "two", "three", "viewers 4"]
                assert COALESCED.labels("chat:message")._value.get() == coalesced + 3  # batched
        assert not errors, errors
    finally:
        await running.server.close()
