"""One connect-and-ack exchange with the official JavaScript socket.io-client from npm."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from tests.conftest import RunningApp

from .call_clients import Parties

JS_DIR = Path(__file__).with_name("js")


async def _run(*args: str, cwd: Path, within: float) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _installed_client() -> None:
    """socket.io-client as locked in package-lock.json, installed once."""
    if (JS_DIR / "node_modules" / "socket.io-client" / "package.json").exists():
        return
    npm = shutil.which("npm")
    assert npm, "npm is required for the JavaScript client test"
    code, out, err = await _run(npm, "ci", "--no-audit", "--no-fund", cwd=JS_DIR, within=180)
    assert code == 0, f"npm ci failed: {out}\n{err}"


async def test_javascript_client_places_a_call(call_app: RunningApp, parties: Parties) -> None:
    await _installed_client()
    node = shutil.which("node")
    assert node, "node is required for the JavaScript client test"
    bob = await parties("bob")
    await (await parties("alice")).close()  # alice is a known user
    code, out, err = await _run(
        node, "initiate.mjs", call_app.url, call_app.token("alice"), "bob", cwd=JS_DIR, within=20
    )
    assert code == 0, f"{out}\n{err}"
    result = json.loads(out.strip().splitlines()[-1])
    ack = result["ack"]
    assert result["connected"] is True and ack["status"] == "ringing"
    assert isinstance(ack["callId"], str) and isinstance(ack["iceServers"], list) and ack["ringsUntil"] > 0
    incoming = await bob.wait("call:incoming", ack["callId"])
    assert incoming["from"] == "alice" and incoming["media"] == "audio"
