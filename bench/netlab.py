"""Shaped links between network namespaces: the real-network bench and test bed.

This kernel has the ``tbf`` and ``htb`` qdiscs but no netem, no tc classifiers
and no iptables, so one veth pair carries one shape. A :class:`Netlab` is one
server namespace plus one namespace per peer, each peer joined to the server's
by its own veth pair::

    peer ns "<lab>-p<N>"            server ns "<lab>-srv"
    srv  10.77.N.2/24  <== veth ==>  p<N>  10.77.N.1/24
    egress tbf = peer uplink         egress tbf = peer downlink

Addresses exist only inside these namespaces (interfaces are created directly
in them, so parallel labs never clash, even on addresses). The server
namespace forwards between peers, so two browsers can also talk directly
through it (the "no server" reference). Everything is removed by
:meth:`Netlab.close`; :func:`sweep` removes what a killed run left behind (a
lab's names carry the pid of the process that made it). A peer added with
``impaired=`` is joined by two TUN devices bridged by a thread that drops and
delays packets (bench/impair.py) instead of a veth pair.

The airwave server runs as a subprocess inside the server namespace
(:class:`AirwaveServer`), Chromium inside a peer namespace (:func:`chromium_in`,
Playwright through a wrapper executable that enters the namespace), and
:func:`http_in` reaches any address of a namespace from this process without
adding anything to the host's own network. Needs root (``ip netns add``).

This module imports no server code: bench/shaped.py and tests/netlab use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from .impair import Impairment, Impairments, TunBridge, open_tun

PREFIX = "awnl"
CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parent.parent
PAGE_SCRIPT = Path(__file__).with_name("netlab_page.js")
SERVER_PORT = 8080
CLONE_NEWNET = 0x40000000
T = TypeVar("T")
PEER_LINK = "srv"  # the peer's end of its veth pair, in the peer's namespace

_CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks,"
    "BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights",
]


class NetlabUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, or no `ip netns`)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _tc(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["tc", "-n", namespace, *args], capture_output=True, text=True, timeout=15)
    if check and result.returncode != 0:
        raise RuntimeError(f"tc -n {namespace} {' '.join(args)}: {result.stderr.strip()}")
    return result


def _in_ns(namespace: str, *args: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", namespace, *args], capture_output=True, text=True,
                            timeout=15)
    if result.returncode != 0:
        raise RuntimeError(f"in {namespace}: {' '.join(args)}: {result.stderr.strip()}")


def require_namespaces() -> None:
    """Raise NetlabUnavailable with the reason when this process cannot make namespaces."""
    if os.geteuid() != 0:
        raise NetlabUnavailable("the shaped-link bench needs root (network namespaces and tc); CI runs as root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetlabUnavailable(f"`{tool}` (iproute2) is not installed")
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        raise NetlabUnavailable(f"`ip netns add` fails here: {exc}") from None
    _ip("netns", "del", probe, check=False)


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(namespace: str) -> None:
    out = _ip("netns", "pids", namespace, check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete_namespace(namespace: str) -> None:
    _kill_namespace_processes(namespace)
    _ip("netns", "del", namespace, check=False)


def sweep() -> list[str]:
    """Remove the namespaces (and their processes) of labs whose owning process is gone."""
    removed = []
    for namespace in _namespaces():
        match = re.fullmatch(rf"{PREFIX}-(\d+)-.*", namespace)
        if match and not _owner_alive(int(match.group(1))):
            _delete_namespace(namespace)
            removed.append(namespace)
    return removed


@dataclass(frozen=True)
class Shape:
    """One direction of a link: a token bucket of ``rate_kbit`` and a queue of ``queue_ms``."""

    rate_kbit: int
    queue_ms: int = 300
    burst_bytes: int = 16_000

    def tbf(self) -> list[str]:
        return ["tbf", "rate", f"{self.rate_kbit}kbit", "burst", str(self.burst_bytes),
                "latency", f"{self.queue_ms}ms"]


@dataclass
class Peer:
    """One peer namespace and its link to the server namespace."""

    name: str
    index: int
    namespace: str
    server_link: str  # the server's end of the veth pair, in the server namespace
    address: str
    down: Shape | None = None
    up: Shape | None = None

    @property
    def server_address(self) -> str:
        """The server namespace's address on this peer's link."""
        return f"10.77.{self.index}.1"


@dataclass
class Netlab:
    """A server namespace and shaped peers; see the module docstring."""

    tag: str = ""
    peers: dict[str, Peer] = field(default_factory=dict)
    server_namespace: str = ""
    _made: list[str] = field(default_factory=list)
    _moves: dict[str, int] = field(default_factory=dict)
    _bridges: dict[str, TunBridge] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tag = self.tag or os.urandom(3).hex()
        self.server_namespace = self._name("srv")

    def _name(self, suffix: str) -> str:
        return f"{PREFIX}-{os.getpid()}-{self.tag}-{suffix}"

    def __enter__(self) -> Netlab:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        _ip("netns", "add", self.server_namespace)
        self._made.append(self.server_namespace)
        _ip("-n", self.server_namespace, "link", "set", "lo", "up")
        _in_ns(self.server_namespace, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    def close(self) -> None:
        for bridge in self._bridges.values():
            bridge.close()
        self._bridges.clear()
        for namespace in reversed(self._made):
            _delete_namespace(namespace)
        self._made.clear()

    def add_peer(self, name: str, *, down: Shape | None = None, up: Shape | None = None,
                 impaired: Impairments | None = None) -> Peer:
        """A new peer namespace linked to the server's; ``down``/``up`` shape its link.
        ``impaired``: the link is a pair of TUN devices bridged by this process, which drops and
        delays packets (bench/impair.py) instead of a veth pair."""
        if name in self.peers:
            raise ValueError(f"peer {name!r} exists")
        index = len(self.peers) + 1
        if index > 200:
            raise ValueError("at most 200 peers")
        namespace = self._name(f"p{index}")
        _ip("netns", "add", namespace)
        self._made.append(namespace)
        server_link = f"p{index}"
        if impaired is None:
            _ip("-n", self.server_namespace, "link", "add", server_link, "type", "veth",
                "peer", "name", PEER_LINK, "netns", namespace)
        else:
            server_fd = in_namespace(self.server_namespace, lambda: open_tun(server_link))
            peer_fd = in_namespace(namespace, lambda: open_tun(PEER_LINK))
            bridge = TunBridge(server_fd, peer_fd, impaired)
            bridge.start()
            self._bridges[name] = bridge
        peer = Peer(name, index, namespace, server_link, f"10.77.{index}.2")
        _ip("-n", self.server_namespace, "addr", "add", f"{peer.server_address}/24", "dev", server_link)
        _ip("-n", self.server_namespace, "link", "set", server_link, "up")
        for setting in ("all", "default", PEER_LINK):
            _in_ns(namespace, "sysctl", "-q", "-w", f"net.ipv4.conf.{setting}.promote_secondaries=1")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "addr", "add", f"{peer.address}/24", "dev", PEER_LINK)
        _ip("-n", namespace, "link", "set", PEER_LINK, "up")
        _ip("-n", namespace, "route", "add", "default", "via", peer.server_address)
        self.peers[name] = peer
        self.shape(name, down=down, up=up)
        return peer

    def shape(self, name: str, *, down: Shape | None = None, up: Shape | None = None) -> None:
        """Set both directions of a peer's link (None lifts that direction's limit)."""
        peer = self.peers[name]
        for namespace, link, wanted in ((self.server_namespace, peer.server_link, down),
                                        (peer.namespace, PEER_LINK, up)):
            if wanted is None:
                _tc(namespace, "qdisc", "del", "dev", link, "root", check=False)
            else:
                _tc(namespace, "qdisc", "replace", "dev", link, "root", *wanted.tbf())
        peer.down, peer.up = down, up

    def unshape(self, name: str) -> None:
        self.shape(name, down=None, up=None)

    def impair(self, name: str, *, down: Impairment | None = None, up: Impairment | None = None) -> None:
        """Change the loss and delay of an impaired peer's link (None: that direction unimpaired)."""
        bridge = self._bridges[name]
        bridge.impairments.down = down or Impairment()
        bridge.impairments.up = up or Impairment()

    def impairment_stats(self, name: str) -> dict[str, dict[str, int]]:
        """Packets seen and dropped per direction on an impaired peer's link ({} for a veth link)."""
        bridge = self._bridges.get(name)
        return bridge.stats() if bridge is not None else {}

    def link_stats(self, name: str) -> dict[str, int]:
        """The downlink qdisc's counters (sent bytes/packets, drops, overlimits) of a peer."""
        peer = self.peers[name]
        out = _tc(self.server_namespace, "-s", "qdisc", "show", "dev", peer.server_link).stdout
        figures: dict[str, int] = {}
        match = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", out)
        if match:
            for key, value in zip(("bytes", "packets", "dropped", "overlimits"), match.groups(), strict=True):
                figures[key] = int(value)
        return figures

    def move_address(self, name: str) -> str:
        """Give a peer a new address on its link (the old one goes): a change of network for ICE."""
        peer = self.peers[name]
        moves = self._moves.get(name, 0) + 1
        if moves > 250:
            raise ValueError("too many moves")
        self._moves[name] = moves
        new = f"10.77.{peer.index}.{2 + moves}"
        _ip("-n", peer.namespace, "addr", "add", f"{new}/24", "dev", PEER_LINK)
        _ip("-n", peer.namespace, "addr", "del", f"{peer.address}/24", "dev", PEER_LINK)
        _ip("-n", peer.namespace, "route", "replace", "default", "via", peer.server_address)
        peer.address = new
        return new

    def server_addresses(self) -> list[str]:
        return [peer.server_address for peer in self.peers.values()]


def in_namespace(namespace: str, make: Callable[[], T]) -> T:
    """``make()`` run by a short-lived thread that entered ``namespace`` (sockets and TUN devices
    it opens live there); this process stays where it is."""
    made: dict[str, Any] = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                made["error"] = OSError(ctypes.get_errno(), f"setns({namespace}) failed")
                return
            made["value"] = make()
        except Exception as exc:  # handed to the caller
            made["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name=f"setns-{namespace}")
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    return made["value"]


def socket_in(namespace: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A socket that lives in ``namespace``."""
    return in_namespace(namespace, lambda: socket.socket(family, kind, proto))


@contextlib.asynccontextmanager
async def http_in(namespace: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session whose connections start inside ``namespace``."""
    def factory(addr_info: Any) -> socket.socket:
        family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
        return socket_in(namespace, family, kind, proto)

    connector = aiohttp.TCPConnector(socket_factory=factory, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        yield http


class AirwaveServer:
    """``airwave serve`` inside the lab's server namespace, embedded mode, data in a temp dir."""

    def __init__(self, lab: Netlab, *, env: Mapping[str, str] | None = None,
                 executable: Path | None = None) -> None:
        self.lab = lab
        self.executable = executable or REPO / ".venv" / "bin" / "airwave"
        self.jwt_secret = "netlab-" + os.urandom(16).hex()
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-data-"))
        self.log_path = self.data_dir / "server.log"
        self.extra_env = dict(env or {})
        self.process: asyncio.subprocess.Process | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
        env.update({
            "AIRWAVE_DATA_DIR": str(self.data_dir),
            "AIRWAVE_JWT_SECRET": self.jwt_secret,
            "AIRWAVE_HOST": "0.0.0.0",
            "AIRWAVE_PORT": str(SERVER_PORT),
            "AIRWAVE_STUN_PORT": "0",
            "AIRWAVE_ICE_ADDRESSES": ",".join(self.lab.server_addresses()),
            "AIRWAVE_LOG_LEVEL": "info",
        })
        env.update(self.extra_env)
        return env

    def url_for(self, peer: Peer) -> str:
        """The server's origin as ``peer`` reaches it (its own link's address)."""
        return f"http://{peer.server_address}:{SERVER_PORT}"

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{SERVER_PORT}"

    async def start(self, within: float = 30.0) -> None:
        if not self.lab.peers:
            raise RuntimeError("add the peers first: the server's ICE addresses are their links")
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.lab.server_namespace, str(self.executable), "serve",
                "--workers", "1", "--dev",  # the web app's demo sign-in drives the pages
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.data_dir,
            )
        deadline = time.monotonic() + within
        async with http_in(self.lab.server_namespace) as http:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise RuntimeError(f"airwave exited ({self.process.returncode}):\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(self.local_url + "/health/readiness") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.3)
        raise RuntimeError(f"airwave not ready within {within}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def token(self, user: str, *, room: str = "*", publish: bool = False, subscribe: bool = False,
              ttl: int = 3600) -> str:
        """A token minted by ``airwave token`` with this server's secret."""
        args = [str(self.executable), "token", "--user", user, "--room", room, "--ttl", str(ttl)]
        args += ["--publish"] * publish + ["--subscribe"] * subscribe
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=30,
                                cwd=self.data_dir, check=True)
        return result.stdout.strip()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _launcher(namespace: str, directory: Path) -> Path:
    """An executable that runs the system Chromium inside ``namespace`` (fds kept: Playwright's pipe)."""
    path = directory / f"chromium-{namespace}"
    path.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {CHROMIUM} "$@"\n')
    path.chmod(0o755)
    return path


@contextlib.asynccontextmanager
async def chromium_in(peer: Peer, *, secure_origins: tuple[str, ...] = ()) -> AsyncIterator[Any]:
    """A Playwright Browser whose Chromium runs in ``peer``'s namespace.

    ``secure_origins`` are http origins treated as secure (getUserMedia on
    ``http://10.77.N.1:8080``)."""
    from playwright.async_api import async_playwright

    if not os.access(CHROMIUM, os.X_OK):
        raise NetlabUnavailable(f"{CHROMIUM} is not installed")
    flags = list(_CHROMIUM_FLAGS)
    if secure_origins:
        flags.append("--unsafely-treat-insecure-origin-as-secure=" + ",".join(secure_origins))
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-chromium-") as directory:
        launcher = _launcher(peer.namespace, Path(directory))
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(launcher), args=flags,
                                                       headless=True, timeout=30_000)
            try:
                yield browser
            finally:
                await browser.close()


async def open_lab_page(browser: Any, origin: str, on_console: Callable[[str], None] | None = None) -> Any:
    """A page at ``<origin>/__netlab__`` (answered by Playwright, never by the server) with
    ``window.netlab`` (bench/netlab_page.js) installed; same origin as the server."""
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(20_000)
    if on_console is not None:
        page.on("console", lambda message: on_console(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: on_console(f"pageerror: {error}"))
    html = "<!doctype html><meta charset=utf-8><title>netlab</title><body></body>"

    async def serve(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html", body=html)

    await page.route(f"{origin}/__netlab__", serve)
    await page.goto(f"{origin}/__netlab__")
    await install_lab_script(page)
    return page


async def install_lab_script(page: Any) -> None:
    """``window.netlab`` (bench/netlab_page.js) in any page, e.g. one of the web app's."""
    await page.add_script_tag(content=PAGE_SCRIPT.read_text(), type="module")
    await page.wait_for_function("() => window.netlab !== undefined")


@contextlib.asynccontextmanager
async def lab_page(peer: Peer, origin: str, log: Callable[[str], None] | None = None) -> AsyncIterator[Any]:
    """A Chromium in ``peer``'s namespace with one lab page on ``origin`` (treated as secure);
    ``log`` gets the page's console lines."""
    async with chromium_in(peer, secure_origins=(origin,)) as browser:
        printer = None if log is None else (lambda line: log(f"[{peer.name}] {line}"))
        yield await open_lab_page(browser, origin, printer)


async def summary(page: Any, name: str, *, skip_s: float = 10.0) -> dict[str, Any]:
    """The stats summary of one connection of a lab page over the window after ``skip_s``."""
    result: dict[str, Any] = await page.evaluate("([n, s]) => window.netlab.summary(n, s)", [name, skip_s])
    return result


def dumps(figures: Mapping[str, Any]) -> str:
    return json.dumps(figures, indent=2, sort_keys=True)
