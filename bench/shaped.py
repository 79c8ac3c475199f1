"""bench.shaped: what Chromium viewers see through a shaped link (issue 16's table).

Each case builds a fresh lab (bench/netlab.py: namespaces, veth pairs, tbf),
runs the browsers for ``--duration`` seconds and reduces their getStats() over
the window after the first ``--skip`` seconds:

- ``server``: airwave runs inside the lab; a Chromium publisher (fake camera,
  1280x720, one layer) over WHIP; one Chromium viewer behind ``--rate`` kbit/s
  (tbf, ``--queue-ms`` queue) and one unshaped viewer over WHEP.
- ``server-simulcast``: the same, the publisher offering three layers (q/h/f).
- ``direct``: the reference, no server: the publisher's Chromium sends straight
  to the shaped viewer's Chromium over the same link shape (page-to-page
  RTCPeerConnection, signaling carried by this script).

Needs root (network namespaces) and /usr/bin/chromium. Starts airwave from
``.venv/bin/airwave`` of this checkout (``--airwave`` for another)::

    sudo .venv/bin/python -m bench.shaped --cases server,direct --duration 40 --out shaped.json

Unlike the other bench scripts, this one starts its own server (in a namespace):
the shaped links exist only between namespaces it makes and removes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from . import netlab
from .impair import Impairment, Impairments
from .report import finite, format_table, write_json

CASES = ("server", "server-simulcast", "direct", "call")
ROOM = "shaped"
COLUMNS = [
    ("case", "case"),
    ("shaped_fps", "shaped fps"),
    ("shaped_freeze_pct", "freeze %"),
    ("shaped_lost", "lost"),
    ("shaped_height", "shaped lines"),
    ("shaped_kbps", "shaped kbit/s"),
    ("free_fps", "free fps"),
    ("free_height", "free lines"),
    ("free_kbps", "free kbit/s"),
    ("publisher_kbps", "pub kbit/s"),
]


async def _wait_frames(page: Any, name: str, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        latest = await page.evaluate("(n) => window.netlab.latest(n)", name)
        if latest and latest.get("inbound") and latest["inbound"].get("framesDecoded", 0) > 0:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{name} decoded no frame within {within}s")


async def through_server(lab: netlab.Netlab, *, shape: netlab.Shape | None, duration: float, skip_s: float,
                         simulcast: bool, log: Callable[[str], None] = print,
                         airwave: Path | None = None, impaired: Impairments | None = None) -> dict[str, Any]:
    """The publisher, a shaped and an unshaped viewer through airwave; their summaries."""
    publisher = lab.add_peer("publisher")
    shaped = lab.add_peer("shaped", down=shape, impaired=impaired)
    free = lab.add_peer("free")
    server = netlab.AirwaveServer(lab, executable=airwave)
    try:
        await server.start()
        token = server.token("netlab", room=ROOM, publish=True, subscribe=True)
        async with contextlib.AsyncExitStack() as stack:
            pub = await stack.enter_async_context(netlab.lab_page(publisher, server.url_for(publisher), log))
            offered = await pub.evaluate("(a) => window.netlab.publish(a)",
                                         {"room": ROOM, "token": token, "simulcast": simulcast})
            await pub.evaluate("() => window.netlab.connected('publisher')")
            viewers = {}
            for peer in (shaped, free):
                page = await stack.enter_async_context(netlab.lab_page(peer, server.url_for(peer), log))
                await page.evaluate("(a) => window.netlab.watch(a)", {"room": ROOM, "token": token,
                                                                       "name": peer.name})
                viewers[peer.name] = page
            for name, page in viewers.items():
                await page.evaluate("(n) => window.netlab.connected(n)", name)
                await _wait_frames(page, name, 20)
            await asyncio.sleep(duration)
            result = {
                "publisher": await netlab.summary(pub, "publisher", skip_s=skip_s),
                "offered": offered,
                **{name: await netlab.summary(page, name, skip_s=skip_s) for name, page in viewers.items()},
                "link": lab.link_stats("shaped"),
                "impairment": lab.impairment_stats("shaped"),
            }
            for name, page in (("publisher", pub), *viewers.items()):
                await page.evaluate("(n) => window.netlab.stop(n)", name)
            return result
    finally:
        await server.stop()


async def direct(lab: netlab.Netlab, *, shape: netlab.Shape | None, duration: float, skip_s: float,
                 log: Callable[[str], None] = print, impaired: Impairments | None = None) -> dict[str, Any]:
    """The reference: the publisher's Chromium sends straight to the shaped viewer's."""
    publisher = lab.add_peer("publisher")
    shaped = lab.add_peer("shaped", down=shape, impaired=impaired)
    # Pages need an origin; nothing answers on it (the page is served by Playwright).
    origin = f"http://{publisher.server_address}:{netlab.SERVER_PORT}"
    async with netlab.lab_page(publisher, origin, log) as pub, netlab.lab_page(shaped, origin, log) as view:
        await pub.evaluate("() => window.netlab.direct({name: 'publisher', send: true})")
        await view.evaluate("() => window.netlab.direct({name: 'shaped', send: false})")
        offer = await pub.evaluate("() => window.netlab.offer('publisher')")
        answer = await view.evaluate("(sdp) => window.netlab.answer('shaped', sdp)", offer)
        await pub.evaluate("(sdp) => window.netlab.accept('publisher', sdp)", answer)
        await view.evaluate("() => window.netlab.connected('shaped')")
        await _wait_frames(view, "shaped", 20)
        await asyncio.sleep(duration)
        return {
            "publisher": await netlab.summary(pub, "publisher", skip_s=skip_s),
            "shaped": await netlab.summary(view, "shaped", skip_s=skip_s),
            "link": lab.link_stats("shaped"),
            "impairment": lab.impairment_stats("shaped"),
        }


SOCKET_IO_BUNDLE = netlab.REPO / "web" / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
OBSERVE_CALL = "(name) => window.netlab.observe(name, window.airwave.call.connection.pc)"


async def _signed_in(browser: Any, origin: str, name: str, path: str) -> Any:
    # bypass_csp: the lab installs its own script (window.netlab) into the web
    # app's page, which the app's Content-Security-Policy would refuse
    page = await (await browser.new_context(bypass_csp=True)).new_page()
    page.set_default_timeout(20_000)
    await page.goto(f"{origin}/{path}")
    await page.fill("#signin-name", name)
    await page.click("#signin-button")
    await page.wait_for_selector("#me-name")
    await netlab.install_lab_script(page)
    return page


@contextlib.asynccontextmanager
async def web_app_call(lab: netlab.Netlab, server: netlab.AirwaveServer, caller: netlab.Peer,
                       callee: netlab.Peer) -> AsyncIterator[tuple[Any, Any]]:
    """A video call between two Chromiums on the web app's Call page (one per namespace),
    answered and with media both ways; yields (caller page, callee page), each with its call
    connection sampled as ``window.netlab`` connection "call"."""
    if not SOCKET_IO_BUNDLE.is_file():
        raise RuntimeError("the web app needs socket.io-client: cd web && npm ci --no-audit --no-fund")
    caller_origin, callee_origin = server.url_for(caller), server.url_for(callee)
    async with netlab.chromium_in(caller, secure_origins=(caller_origin,)) as caller_browser, \
            netlab.chromium_in(callee, secure_origins=(callee_origin,)) as callee_browser:
        callee_page = await _signed_in(callee_browser, callee_origin, "Cleo", "#/live")
        caller_page = await _signed_in(caller_browser, caller_origin, "Carl", "#/call")
        button = await caller_page.wait_for_selector("#online-users li:has-text('Cleo') button")
        await button.click()
        await callee_page.click("#incoming:not([hidden]) #call-answer")
        for page in (caller_page, callee_page):
            await page.wait_for_function("() => (document.querySelector('#call-remote') || {}).videoWidth > 0")
            await page.evaluate(OBSERVE_CALL, "call")
        yield caller_page, callee_page


async def call_through_server(lab: netlab.Netlab, *, shape: netlab.Shape | None, duration: float, skip_s: float,
                              airwave: Path | None = None, impaired: Impairments | None = None
                              ) -> dict[str, Any]:
    """A 1:1 call through airwave where the callee's downlink is shaped: both parties' summaries."""
    caller = lab.add_peer("caller")
    callee = lab.add_peer("callee", down=shape, impaired=impaired)
    server = netlab.AirwaveServer(lab, executable=airwave, env={"AIRWAVE_CALL_DURATION": "0"})
    try:
        await server.start()
        async with web_app_call(lab, server, caller, callee) as (caller_page, callee_page):
            await asyncio.sleep(duration)
            return {
                "caller": await netlab.summary(caller_page, "call", skip_s=skip_s),
                "callee": await netlab.summary(callee_page, "call", skip_s=skip_s),
                "link": lab.link_stats("callee"),
                "impairment": lab.impairment_stats("callee"),
            }
    finally:
        await server.stop()


def row(case: str, result: dict[str, Any]) -> dict[str, Any]:
    """One line of the table from a case's summaries."""
    def inbound(name: str) -> dict[str, Any]:
        return (result.get(name) or {}).get("inbound") or {}

    receiver, sender = ("callee", "caller") if "callee" in result else ("shaped", "publisher")
    shaped, free = inbound(receiver), inbound("free")
    outbound = (result.get(sender) or {}).get("outbound") or {}
    publisher_kbps = sum(layer.get("kbps") or 0 for layer in outbound.values())
    return {
        "case": case,
        "shaped_fps": finite(shaped.get("fps"), 1),
        "shaped_freeze_pct": finite(shaped.get("freezePct"), 1),
        "shaped_lost": shaped.get("packetsLost"),
        "shaped_height": shaped.get("heightMedian"),
        "shaped_kbps": finite(shaped.get("kbps"), 0),
        "free_fps": finite(free.get("fps"), 1) if free else None,
        "free_height": free.get("heightMedian") if free else None,
        "free_kbps": finite(free.get("kbps"), 0) if free else None,
        "publisher_kbps": finite(publisher_kbps, 0),
    }


async def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    shape = netlab.Shape(args.rate, queue_ms=args.queue_ms) if args.rate else None
    impaired = None
    if args.loss or args.delay_ms:
        impaired = Impairments(down=Impairment(loss=args.loss / 100, delay_ms=args.delay_ms))
    log = print if args.verbose else (lambda line: None)
    airwave = Path(args.airwave) if args.airwave else None
    with netlab.Netlab() as lab:
        if case == "direct":
            return await direct(lab, shape=shape, duration=args.duration, skip_s=args.skip, log=log,
                                impaired=impaired)
        if case == "call":
            return await call_through_server(lab, shape=shape, duration=args.duration, skip_s=args.skip,
                                             airwave=airwave, impaired=impaired)
        return await through_server(lab, shape=shape, duration=args.duration, skip_s=args.skip,
                                    simulcast=case == "server-simulcast", log=log, airwave=airwave,
                                    impaired=impaired)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    netlab.require_namespaces()
    netlab.sweep()
    results: dict[str, Any] = {"rate_kbit": args.rate, "queue_ms": args.queue_ms, "loss_pct": args.loss,
                               "delay_ms": args.delay_ms,
                               "duration_s": args.duration, "skip_s": args.skip, "cases": {}}
    rows = []
    for case in args.cases:
        print(f"case {case}: {args.duration:.0f} s ...", flush=True)
        results["cases"][case] = await run_case(case, args)
        rows.append(row(case, results["cases"][case]))
    results["rows"] = rows
    print(format_table(rows, COLUMNS))
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.shaped", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="server,server-simulcast,direct",
                        help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--rate", type=int, default=600, help="shaped viewer's downlink, kbit/s (0: no limit)")
    parser.add_argument("--queue-ms", type=int, default=300, help="tbf queue (latency), ms")
    parser.add_argument("--loss", type=float, default=0.0,
                        help="random loss on the shaped peer's downlink, %% (user space, bench/impair.py)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added delay on that downlink, ms")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of media per case")
    parser.add_argument("--skip", type=float, default=10.0, help="seconds left out at the start")
    parser.add_argument("--airwave", default="", help="the airwave executable (default .venv/bin/airwave)")
    parser.add_argument("--out", default="", help="JSON file for the results")
    parser.add_argument("--verbose", action="store_true", help="print the pages' console")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if args.rate < 0 or not 0 <= args.loss <= 100 or args.delay_ms < 0:
        parser.error("--rate >= 0 (0: no limit), --loss 0..100, --delay-ms >= 0")
    if not 1 <= args.duration <= 600 or not 0 <= args.skip < args.duration:
        parser.error("--duration 1..600 and --skip below it")
    return args


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = asyncio.run(main(args))
    except netlab.NetlabUnavailable as exc:
        print(f"bench.shaped: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
