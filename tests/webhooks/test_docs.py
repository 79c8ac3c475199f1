"""The receiver example of docs/webhooks.md, run as written, verifies and
receives airwave's outgoing webhooks, and refuses a forged one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from config import Settings
from tests.conftest import free_port, start_app
from tests.gifts.gift_clients import CATALOG_JSON, WEBHOOK_SECRET, fund

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRETS = ["whsec-doc-new-" + "d" * 16, "whsec-doc-old-" + "e" * 16]


def receiver_example() -> str:
    match = re.search(r"```python receiver\n(.*?)```", DOC.read_text(), flags=re.S)
    assert match, "docs/webhooks.md has no receiver example"
    return match.group(1)


async def test_the_documented_receiver_verifies_and_prints_events(
    make_settings: Callable[..., Settings],
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", receiver_example(),
        env={**os.environ, "PORT": str(port), "WEBHOOK_SECRETS": SECRETS[1]},  # knows the old one only
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/hooks"
    app = None
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.post(url, data=b"{}") as r:
                        assert r.status == 401  # unsigned: refused
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            forged = {"X-Airwave-Timestamp": str(int(time.time())), "X-Airwave-Signature": "sha256=" + "0" * 64}
            async with http.post(url, data=b'{"id": "x"}', headers=forged) as r:
                assert r.status == 401
        app = await start_app(make_settings(
            webhook_urls=json.dumps([{"url": url, "secrets": SECRETS}]), webhook_poll_interval=0.1,
            webhook_secret=WEBHOOK_SECRET, gifts=CATALOG_JSON,
        ))
        await fund(app, "reader", 12)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        event_type, key, seq, data = line.split(" ", 3)
        assert (event_type, key, seq) == ("wallet.credited", "user:reader", "1")
        assert json.loads(data)["balance"] == 12
    finally:
        if app is not None:
            await app.server.close()
        proc.kill()
        await proc.wait()
