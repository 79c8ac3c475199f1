"""The signing examples in docs/webhooks.md work as written against a running server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from tests.conftest import RunningApp
from tests.gifts.gift_clients import WEBHOOK_SECRET, wallet

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def code_block(language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    assert match, f"docs/webhooks.md has no {language} example"
    return match.group(1)


async def run(*argv: str, url: str) -> str:
    env = {**os.environ, "AIRWAVE_URL": url, "AIRWAVE_WEBHOOK_SECRET": WEBHOOK_SECRET}
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_shell_and_python_examples_credit_once(running: RunningApp) -> None:
    first = json.loads(await run("bash", "-euc", code_block("sh"), url=running.url))
    assert (first["userId"], first["coins"], first["balance"]) == ("u42", 500, 500)
    # The Python example sends the same eventId: a replay, answered 200, nothing credited.
    status, body = (await run(sys.executable, "-c", code_block("python"), url=running.url)).split(" ", 1)
    assert status == "200"
    assert "'transferId': '" + first["transferId"] + "'" in body
    assert await wallet(running, "u42") == {"coins": 500, "earnings": 0}
