"""Issue 16's acceptance through a real shaped link (tbf in network namespaces, real Chromiums).

- A simulcast publisher (Chromium, 1280x720, q/h/f), a viewer behind 600 kbit/s and an
  unshaped viewer: the shaped viewer gets a low layer without freezing, the unshaped one the
  top layer the publisher sends; lifting the limit brings the shaped viewer back to the top.
- A single-layer publisher (FFmpeg's WHIP, Chromium without simulcast): a shaped viewer
  joining does not cost the unshaped viewer frames or extra keyframes.
- A call between two Chromiums, the callee's downlink limited to 500 kbit/s: the caller's
  encoder follows the callee's downlink (REMB relayed) and the callee's picture keeps moving.

Figures go to test-artifacts/netlab/ (and bench/RESULTS.md through ``python -m bench.shaped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.netlab import Netlab, Shape, lab_page
from bench.shaped import web_app_call

from ..api.test_ffmpeg_whip import p256_certificate
from .conftest import LabAirwave, record

pytestmark = pytest.mark.netlab

ROOM = "accept"
WATCH_S = 40.0  # seconds each viewer watches
SKIP_S = 10.0  # left out of the measured window
MAX_FREEZE_PCT = 2.0
FPS_TOLERANCE = 0.10
LIFT_WAIT_S = 25.0
FFMPEG_PUBLISHER = Path(__file__).resolve().parents[1] / "api" / "ffmpeg_whip_publisher.py"


async def latest(page: Any, name: str) -> dict[str, Any]:
    return await page.evaluate("(n) => window.netlab.latest(n)", name) or {}


async def summary(page: Any, name: str, skip_s: float = SKIP_S) -> dict[str, Any]:
    return await page.evaluate("([n, s]) => window.netlab.summary(n, s)", [name, skip_s])


async def first_frame(page: Any, name: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ((await latest(page, name)).get("inbound") or {}).get("framesDecoded", 0) > 0:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{name} decoded no frame within {within} s")


async def watch(stack: contextlib.AsyncExitStack, lab: Netlab, server: Any, token: str, name: str) -> Any:
    page = await stack.enter_async_context(lab_page(lab.peers[name], server.url_for(lab.peers[name])))
    await page.evaluate("(a) => window.netlab.watch(a)", {"room": ROOM, "token": token, "name": name})
    await page.evaluate("(n) => window.netlab.connected(n)", name)
    return page


def top_sent(sample: dict[str, Any]) -> int:
    """The highest layer (lines) a publisher's sample shows it sending."""
    return max((layer.get("frameHeight") or 0 for layer in (sample.get("outbound") or {}).values()
                if layer.get("active", True)), default=0)


@pytest.mark.timeout(240)
async def test_simulcast_gives_each_viewer_the_layer_its_link_holds(lab: Netlab, airwave: LabAirwave) -> None:
    lab.add_peer("publisher")
    lab.add_peer("shaped", down=Shape(600, queue_ms=300))
    lab.add_peer("free")
    server = await airwave.start()
    token = airwave.token("netlab", room=ROOM, publish=True, subscribe=True)
    async with contextlib.AsyncExitStack() as stack:
        pub = await stack.enter_async_context(lab_page(lab.peers["publisher"],
                                                       server.url_for(lab.peers["publisher"])))
        published = time.monotonic()
        offered = await pub.evaluate("(a) => window.netlab.publish(a)",
                                     {"room": ROOM, "token": token, "simulcast": True})
        assert offered["encodings"] == ["q", "h", "f"], offered
        await pub.evaluate("() => window.netlab.connected('publisher')")
        # the publisher's own ramp-up (its encoder starts small) is not the server's doing
        warm = time.monotonic()
        while time.monotonic() - warm < 15.0:
            if top_sent(await latest(pub, "publisher")) >= 720:
                break
            await asyncio.sleep(0.5)
        shaped = await watch(stack, lab, server, token, "shaped")
        free_joined = time.monotonic()
        free = await watch(stack, lab, server, token, "free")
        await first_frame(shaped, "shaped")
        await first_frame(free, "free")
        started = time.monotonic()
        # once a second: the publisher's top layer and the free viewer's lines at that moment
        moments: list[tuple[float, int, int]] = []
        while time.monotonic() - started < WATCH_S:
            sent, got = await latest(pub, "publisher"), await latest(free, "free")
            moments.append((time.monotonic() - started, top_sent(sent),
                            (got.get("inbound") or {}).get("frameHeight") or 0))
            await asyncio.sleep(1.0)
        # the publisher's figures over the viewers' window
        pub_skip = free_joined - published + SKIP_S
        figures = {"publisher": await summary(pub, "publisher", pub_skip), "shaped": await summary(shaped, "shaped"),
                   "free": await summary(free, "free"), "link": lab.link_stats("shaped"), "moments": moments}

        lab.unshape("shaped")
        lifted = time.monotonic()
        back_after = None
        while time.monotonic() - lifted < LIFT_WAIT_S:  # longer than asked: the figure shows by how much
            top = top_sent(await latest(pub, "publisher"))
            height = ((await latest(shaped, "shaped")).get("inbound") or {}).get("frameHeight") or 0
            if top and height == top:
                back_after = time.monotonic() - lifted
                break
            await asyncio.sleep(0.5)
        figures["shaped_back_on_top_after_s"] = back_after
        figures["shaped_after_lift"] = await latest(shaped, "shaped")
        record("accept_simulcast", figures)

    shaped_in, free_in = figures["shaped"]["inbound"], figures["free"]["inbound"]
    assert shaped_in["framesDecodedTotal"] > 0 and shaped_in["fps"] > 0
    assert shaped_in["heightMax"] <= 360, shaped_in
    assert shaped_in["freezePct"] < MAX_FREEZE_PCT, shaped_in
    # the free viewer's lines equal the publisher's top layer wherever that layer was steady
    steady = [(t, top, got) for (t, top, got), before, after in zip(moments[1:-1], moments, moments[2:], strict=False)
              if t >= SKIP_S and before[1] == top == after[1]]
    assert steady, moments
    assert [m for m in steady if m[2] != m[1]] == [], steady
    outbound = figures["publisher"]["outbound"]
    top_rid = max(outbound, key=lambda rid: outbound[rid]["heightMedian"] or 0)
    sent_fps = outbound[top_rid]["fps"]
    assert abs(free_in["fps"] - sent_fps) <= FPS_TOLERANCE * sent_fps, (free_in, outbound)
    assert back_after is not None and back_after <= 15.0, (back_after, figures["shaped_after_lift"])


async def publish_single_layer(stack: contextlib.AsyncExitStack, lab: Netlab, server: Any, token: str,
                               publisher: str, tmp_path: Path) -> Any:
    """Start a one-layer publisher; returns its lab page (Chromium) or None (FFmpeg)."""
    peer = lab.peers["publisher"]
    if publisher == "chromium":
        page = await stack.enter_async_context(lab_page(peer, server.url_for(peer)))
        offered = await page.evaluate("(a) => window.netlab.publish(a)",
                                      {"room": ROOM, "token": token, "simulcast": False})
        assert offered["encodings"] == ["-"], offered
        await page.evaluate("() => window.netlab.connected('publisher')")
        return page
    cert, key = p256_certificate(tmp_path)
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", peer.namespace, sys.executable, str(FFMPEG_PUBLISHER),
        f"{server.url_for(peer)}/whip/{ROOM}", token, "120", str(cert), str(key),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def stop() -> None:
        if process.returncode is None:
            process.kill()
        await process.wait()

    stack.push_async_callback(stop)
    return None


async def rates(page: Any, name: str, seconds: float) -> dict[str, float]:
    """The viewer's frame rate and keyframes over the next ``seconds``."""
    first = (await latest(page, name)).get("inbound") or {}
    began = time.monotonic()
    await asyncio.sleep(seconds)
    last = (await latest(page, name)).get("inbound") or {}
    elapsed = time.monotonic() - began
    frames = last.get("framesDecoded", 0) - first.get("framesDecoded", 0)
    keyframes = last.get("keyFramesDecoded", 0) - first.get("keyFramesDecoded", 0)
    return {"seconds": elapsed, "fps": frames / elapsed, "keyframes": keyframes,
            "keyframesPerS": keyframes / elapsed}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("publisher", ["ffmpeg", "chromium"])
async def test_a_shaped_viewer_costs_a_single_layer_room_nothing(
        lab: Netlab, airwave: LabAirwave, publisher: str, tmp_path: Path) -> None:
    lab.add_peer("publisher")
    lab.add_peer("shaped", down=Shape(600, queue_ms=300))
    lab.add_peer("free")
    server = await airwave.start()
    token = airwave.token("netlab", room=ROOM, publish=True, subscribe=True)
    async with contextlib.AsyncExitStack() as stack:
        pub = await publish_single_layer(stack, lab, server, token, publisher, tmp_path)
        free = await watch(stack, lab, server, token, "free")
        await first_frame(free, "free")
        await asyncio.sleep(3.0)  # past the start's keyframe requests
        alone = await rates(free, "free", 15.0)
        shaped = await watch(stack, lab, server, token, "shaped")
        await first_frame(shaped, "shaped")
        await asyncio.sleep(3.0)  # past the shaped viewer's first keyframe
        together = await rates(free, "free", 20.0)
        figures = {"publisher": publisher, "alone": alone, "together": together,
                   "shaped": await summary(shaped, "shaped", 0), "link": lab.link_stats("shaped")}
        if pub is not None:
            figures["sent"] = await summary(pub, "publisher", 0)
        record(f"accept_single_layer_{publisher}", figures)

    assert alone["fps"] > 0
    assert together["fps"] >= (1 - FPS_TOLERANCE) * alone["fps"], figures
    # keyframes: as many per second as without the shaped viewer. A publisher with a fixed
    # GOP (FFmpeg: one a second) shows 14-16 in a 15 s window, so each window's count may be
    # one off: the bound takes one more in the window alone and one more in the window together
    alone_rate = (alone["keyframes"] + 1) / alone["seconds"]
    assert together["keyframes"] <= alone_rate * together["seconds"] + 1, figures


CALL_LIMIT_KBIT = 500
CALL_RAMP_S = 25.0  # at most, unshaped first: the caller's encoder climbs well above the limit
CALL_SHAPED_S = 25.0


def encoder_kbit(sample: dict[str, Any], previous: dict[str, Any]) -> tuple[float, float | None]:
    """The caller's encoder target and what it sent since ``previous`` (kbit/s)."""
    layers = (sample.get("outbound") or {}).values()
    target = sum((layer.get("targetBitrate") or 0) for layer in layers) / 1000
    if not previous.get("outbound"):
        return target, None
    sent = sum((layer.get("bytesSent") or 0) for layer in layers)
    before = sum((layer.get("bytesSent") or 0) for layer in previous["outbound"].values())
    seconds = (sample["t"] - previous["t"]) / 1000
    return target, 8 * (sent - before) / seconds / 1000 if seconds > 0 else None


@pytest.mark.timeout(240)
async def test_a_callers_encoder_follows_the_callees_downlink(lab: Netlab, airwave: LabAirwave) -> None:
    caller = lab.add_peer("caller")
    callee = lab.add_peer("callee")
    server = await airwave.start(call_duration="0")
    async with web_app_call(lab, server, caller, callee) as (caller_page, callee_page):
        started = time.monotonic()
        encoder: list[tuple[float, float, float | None]] = []  # (s since the limit, target, sent)
        previous: dict[str, Any] = {}
        shaped_at = 0.0
        while not shaped_at or time.monotonic() - shaped_at < CALL_SHAPED_S:
            if not shaped_at and (time.monotonic() - started >= CALL_RAMP_S
                                  or (encoder and encoder[-1][1] > 1.3 * CALL_LIMIT_KBIT)):
                lab.shape("callee", down=Shape(CALL_LIMIT_KBIT, queue_ms=300))
                shaped_at = time.monotonic()
            await asyncio.sleep(1.0)
            sample = await latest(caller_page, "call")
            if not sample.get("outbound"):
                continue
            target, sent = encoder_kbit(sample, previous)
            # seconds since the limit (before it: negative, counted from the ramp's longest end)
            since = time.monotonic() - (shaped_at or started + CALL_RAMP_S)
            encoder.append((round(since, 1), target, sent))
            previous = sample
        # the window: from the limit on (the callee's figures include the drop)
        skip = shaped_at - started
        figures = {"caller": await summary(caller_page, "call", skip),
                   "callee": await summary(callee_page, "call", skip),
                   "encoder": encoder, "link": lab.link_stats("callee")}
        record("accept_call_limited_downlink", figures)

    before = [e for e in encoder if e[0] < 0]
    assert before and max(e[1] for e in before) > CALL_LIMIT_KBIT, ("never above the limit unshaped", encoder)
    below = [t for t, target, sent in encoder if t >= 0 and target < CALL_LIMIT_KBIT
             and sent is not None and sent < CALL_LIMIT_KBIT]
    assert below and below[0] <= 10.0, encoder
    # from then on what the encoder sends stays under the limit (its target saws around it:
    # the estimator's increase phase), over the window and second by second
    sent_kbps = sum(layer["kbps"] or 0 for layer in figures["caller"]["outbound"].values())
    assert sent_kbps < CALL_LIMIT_KBIT, figures["caller"]
    assert [e for e in encoder if e[0] > below[0] and (e[2] or 0) >= CALL_LIMIT_KBIT] == [], encoder
    callee_in = figures["callee"]["inbound"]
    assert callee_in["freezePct"] < MAX_FREEZE_PCT, callee_in
    sent_fps = max(layer["fps"] or 0 for layer in figures["caller"]["outbound"].values())
    assert callee_in["fps"] >= (1 - FPS_TOLERANCE) * sent_fps, (callee_in, figures["caller"]["outbound"])
