"""``airwave serve --workers N``: N node processes behind one HTTP port.

The supervisor (this module, in the parent process) listens on the HTTP port,
accepts each connection and hands its file descriptor to one worker over a
Unix socket pair, choosing the worker by a hash of the client's IP address.
That keeps one client on one worker, which Socket.IO's long-polling needs
(several processes on one SO_REUSEPORT port would scatter its requests). Data
flows straight between client and worker; the supervisor only accepts.

Each worker is a whole airwave node (``airwave serve --worker-fd FD``) with
its own node id, its own slice of ``AIRWAVE_UDP_PORTS`` and the shared Redis
and PostgreSQL. The supervisor also runs the embedded STUN server, once for
the machine. Worker 0 alone runs the RTMP ingest (``AIRWAVE_RTMP_PORT``:
RTMP connections are few and long, one process takes them).

Nodes reach each other over HTTP (edge pulls, call media, recordings) at their
``AIRWAVE_INTERNAL_URL``. The shared port cannot serve as one: the supervisor
would hand a request meant for worker 0 to whichever worker the caller's
address maps to. So each worker also serves its own internal listener, a TCP
socket the supervisor binds on a free port of the internal host (the host of
``AIRWAVE_INTERNAL_URL`` when set, else ``AIRWAVE_HOST``, loopback for a
wildcard) and passes to the worker, which advertises ``http://host:port`` as
its internal URL. The supervisor keeps the socket, so a restarted worker
keeps its URL. It restarts a
worker that dies, and on SIGTERM/SIGINT passes the
signal on, waits for every worker to drain and exit, and exits 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from config import Settings
from turn import StunServer

log = logging.getLogger("airwave.workers")

RESTART_DELAY = 1.0
# Connections the kernel holds for a node before it accepts them (capped by
# net.core.somaxconn): a burst of reconnects (a node restarted, a network back) past
# the queue has its SYNs dropped, and each such client waits a second to try again.
LISTEN_BACKLOG = 1024
STOP_TIMEOUT = 30.0


def udp_slices(ports: tuple[int, int] | None, workers: int) -> list[tuple[int, int] | None]:
    """Split the UDP range so that every worker binds its own ports."""
    if ports is None:
        return [None] * workers
    lo, hi = ports
    size = (hi - lo + 1) // workers
    if size < 1:
        raise ValueError(f"AIRWAVE_UDP_PORTS {lo}-{hi} is too small for {workers} workers")
    return [(lo + i * size, lo + (i + 1) * size - 1) for i in range(workers)]


def internal_host(settings: Settings) -> str:
    """Where the workers' internal listeners bind: the host other nodes reach this machine on."""
    host = urlsplit(settings.internal_url).hostname if settings.internal_url else settings.host
    return host if host not in (None, "", "0.0.0.0", "::") else "127.0.0.1"


def pick_worker(address: str, workers: int) -> int:
    return int.from_bytes(hashlib.blake2s(address.encode(), digest_size=4).digest(), "big") % workers


@dataclass
class Worker:
    index: int
    channel: socket.socket | None = None
    internal: socket.socket | None = None  # this worker's own listener for other nodes
    process: subprocess.Popen[bytes] | None = None
    restarts: int = field(default=0)


class Supervisor:
    def __init__(self, settings: Settings, workers: int, config_file: str | None) -> None:
        self.settings = settings
        self.config_file = config_file
        self.workers = [Worker(i) for i in range(workers)]
        self.slices = udp_slices(settings.udp_ports, workers)
        self.internal_host = internal_host(settings)
        self.stopping = False

    def open_internal_listeners(self) -> None:
        """One listening socket per worker on a free port of the internal host."""
        family = socket.AF_INET6 if ":" in self.internal_host else socket.AF_INET
        for worker in self.workers:
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                listener.bind((self.internal_host, 0))
                listener.listen(LISTEN_BACKLOG)
            except OSError:
                listener.close()
                raise
            worker.internal = listener

    def internal_url(self, worker: Worker) -> str:
        assert worker.internal is not None
        host = f"[{self.internal_host}]" if ":" in self.internal_host else self.internal_host
        return f"http://{host}:{worker.internal.getsockname()[1]}"

    def environment(self, worker: Worker) -> dict[str, str]:
        """A worker's environment: its node id, its internal URL, its UDP slice; the RTMP
        port for worker 0 only; development mode when the supervisor has it (`serve --dev`
        is a flag of the supervisor's command line, not of the workers')."""
        env = dict(os.environ)
        if self.settings.dev:
            env["AIRWAVE_DEV"] = "true"
        base = self.settings.node_id or f"{socket.gethostname()}:{self.settings.port}"
        env["AIRWAVE_NODE_ID"] = f"{base}/{worker.index}"
        if worker.internal is not None:
            env["AIRWAVE_INTERNAL_URL"] = self.internal_url(worker)
        udp = self.slices[worker.index]
        if udp is not None:
            env["AIRWAVE_UDP_PORTS"] = f"{udp[0]}-{udp[1]}"
        if worker.index != 0:
            env["AIRWAVE_RTMP_PORT"] = "0"  # worker 0 owns the RTMP ingest's port
        return env

    def _spawn(self, worker: Worker) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = self.environment(worker)
        command = [sys.executable, "-m", "api.cli", "serve", "--worker-fd", str(child.fileno()),
                   "--host", self.settings.host, "--port", str(self.settings.port)]
        fds = [child.fileno()]
        if worker.internal is not None:
            command += ["--internal-fd", str(worker.internal.fileno())]
            fds.append(worker.internal.fileno())
        if self.config_file:
            command += ["--config", self.config_file]
        worker.process = subprocess.Popen(command, env=env, pass_fds=fds)
        child.close()
        parent.setblocking(False)
        worker.channel = parent
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _hand_over(self, conn: socket.socket, address: str) -> None:
        alive = [w for w in self.workers if w.channel is not None and w.process and w.process.poll() is None]
        if not alive:
            conn.close()
            return
        worker = alive[pick_worker(address, len(alive))]
        try:
            socket.send_fds(worker.channel, [b"c"], [conn.fileno()])  # type: ignore[arg-type]
        except OSError as exc:
            log.warning("could not hand a connection to worker %d: %s", worker.index, exc)
        finally:
            conn.close()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            try:
                conn, addr = await loop.sock_accept(listener)
            except OSError as exc:
                if self.stopping:
                    return
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            self._hand_over(conn, addr[0])

    async def _watch(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.5)
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is not None and not self.stopping:
                    log.error("worker %d exited with %s; restarting", worker.index, worker.process.returncode)
                    if worker.channel is not None:
                        worker.channel.close()
                    worker.restarts += 1
                    await asyncio.sleep(RESTART_DELAY)
                    if not self.stopping:
                        self._spawn(worker)

    async def run(self) -> int:
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.settings.host, self.settings.port))
        listener.listen(LISTEN_BACKLOG)
        listener.setblocking(False)
        try:
            self.open_internal_listeners()
        except OSError as exc:
            listener.close()
            log.error("cannot listen for other nodes on %s (AIRWAVE_INTERNAL_URL's host, else "
                      "AIRWAVE_HOST): %s", self.internal_host, exc)
            return 1
        stun = await StunServer.start_embedded(self.settings)
        for worker in self.workers:
            self._spawn(worker)
        log.info("supervising %d workers on http://%s:%s/", len(self.workers), self.settings.host,
                 self.settings.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [loop.create_task(self._accept(listener)), loop.create_task(self._watch())]
        await stop.wait()
        self.stopping = True
        listener.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        codes = await asyncio.to_thread(self._stop_workers)
        if stun is not None:
            await stun.close()
        log.info("all workers stopped")
        return 0 if all(code == 0 for code in codes) else 1

    def _stop_workers(self) -> list[int]:
        """SIGTERM every running worker and collect how they stopped. A worker
        that had already died (and been logged) before the stop, e.g. during
        its restart delay, does not count."""
        running = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        for worker in running:
            worker.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        codes = []
        for worker in self.workers:
            if worker.process is None or worker not in running:
                if worker.channel is not None:
                    worker.channel.close()
                continue
            try:
                code = worker.process.wait(timeout=STOP_TIMEOUT)
                if code != 0:
                    log.error("worker %d exited with %s while stopping", worker.index, code)
                codes.append(code)
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in %.0fs; killing it", worker.index, STOP_TIMEOUT)
                worker.process.kill()
                codes.append(worker.process.wait())
            if worker.channel is not None:
                worker.channel.close()
        for worker in self.workers:
            if worker.internal is not None:
                worker.internal.close()
        return codes


async def adopt_connections(channel_fd: int, protocol_factory: object) -> None:
    """In a worker: serve every connection the supervisor hands over."""
    loop = asyncio.get_running_loop()
    channel = socket.socket(fileno=channel_fd)
    channel.setblocking(False)
    ready = asyncio.Event()
    loop.add_reader(channel.fileno(), ready.set)
    try:
        while True:
            await ready.wait()
            ready.clear()
            while True:
                try:
                    _, fds, _, _ = socket.recv_fds(channel, 1, 16)
                except BlockingIOError:
                    break
                except OSError:
                    return
                if not fds:
                    return  # the supervisor is gone
                for fd in fds:
                    conn = socket.socket(fileno=fd)
                    conn.setblocking(False)
                    loop.create_task(loop.connect_accepted_socket(protocol_factory, conn))  # type: ignore[arg-type]
    finally:
        loop.remove_reader(channel.fileno())
        channel.close()
