"""Shaped real-network tests: namespaces, veth pairs, tbf, airwave and Chromium in them.

The plumbing is bench/netlab.py (bench.shaped uses it too); these fixtures only
tie it to pytest. Every test here is marked ``netlab``: it runs once (never per
database backend: the server in the lab is the embedded default) and serially,
and needs root and /usr/bin/chromium. A test builds its lab like this::

    async def test_x(lab, airwave):
        viewer = lab.add_peer("viewer", down=Shape(600))   # peers first ...
        server = await airwave.start()                      # ... then the server
        token = airwave.token("alice", publish=True, subscribe=True)
        async with lab_page(viewer, server.url_for(viewer)) as page:
            await page.evaluate("(a) => window.netlab.watch(a)", {...})

Namespaces, server and browsers are removed when the test ends, also when it
fails; a lab left by a killed run is swept at the next session's start.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from auth import Grants, TokenService
from bench.netlab import AirwaveServer, Netlab, NetlabUnavailable, require_namespaces, sweep
from config import load_settings

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "netlab"


@pytest.fixture(scope="session", autouse=True)
def namespaces_available() -> None:
    """Fail (never skip) where namespaces cannot be made; sweep what a killed run left."""
    try:
        require_namespaces()
    except NetlabUnavailable as exc:
        pytest.fail(f"netlab tests need network namespaces: {exc}")
    sweep()


@pytest.fixture
def lab() -> Iterator[Netlab]:
    netlab = Netlab()
    netlab.open()
    try:
        yield netlab
    finally:
        netlab.close()


class LabAirwave:
    """airwave in the lab's server namespace: ``await start()`` once the peers exist;
    ``token()`` mints tokens with its secret (auth.TokenService)."""

    def __init__(self, lab: Netlab) -> None:
        self.lab = lab
        self.server: AirwaveServer | None = None

    async def start(self, **env: str) -> AirwaveServer:
        if self.server is not None:
            raise RuntimeError("one server per lab")
        self.server = AirwaveServer(self.lab, env={f"AIRWAVE_{k.upper()}": str(v) for k, v in env.items()})
        await self.server.start()
        return self.server

    def token(self, user: str, *, room: str = "*", ttl: float = 600, **grants: Any) -> str:
        if self.server is None:
            raise RuntimeError("start() the server first")
        settings = load_settings({"AIRWAVE_JWT_SECRET": self.server.jwt_secret,
                                  "AIRWAVE_DATA_DIR": str(self.server.data_dir)})
        return TokenService(settings).mint(user, name=user, grants=Grants(room=room, **grants), ttl=ttl)

    async def stop(self) -> None:
        if self.server is not None:
            print(f"--- airwave log (last lines) ---\n{self.server.log_tail(60)}")
            await self.server.stop()


@pytest.fixture
async def airwave(lab: Netlab) -> AsyncIterator[LabAirwave]:
    launcher = LabAirwave(lab)
    try:
        yield launcher
    finally:
        await launcher.stop()


def record(name: str, figures: dict[str, Any]) -> Path:
    """Keep a test's measured figures under test-artifacts/netlab/ (and print them)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, sort_keys=True))
    print(f"{name}: {json.dumps(figures, sort_keys=True)}")
    return path


def decoded_frames(sample: dict[str, Any] | None) -> int:
    """Frames decoded, from a stats sample of ``window.netlab.latest``."""
    return int(((sample or {}).get("inbound") or {}).get("framesDecoded", 0))


async def frames_grow(page: Any, name: str, within: float) -> int:
    """Wait until connection ``name`` decodes a new frame; its count then."""
    latest = "(n) => window.netlab.latest(n)"
    sample = await page.evaluate(latest, name)
    start = decoded_frames(sample)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        sample = await page.evaluate(latest, name)
        if decoded_frames(sample) > start:
            return decoded_frames(sample)
    # what the browser saw last (packets, keyframes, PLIs sent): whether media came at all
    raise AssertionError(f"{name} decoded no new frame within {within}s (at {start}): {sample}")
