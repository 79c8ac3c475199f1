"""The load generator of a bench: worker processes spoken to in JSON lines (both
sides of that exchange), the generator's own CPU and event-loop lag, and the rule that
makes a step NOT VALID when the generator, not the server, was the bottleneck.

Shared by bench.signaling (bench/signaling_worker.py), bench.calls (bench/call_worker.py)
and bench.fanout (bench/viewer_worker.py). A worker reads its configuration as the first line on stdin,
then one command a line, and answers each with one line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from .server_probe import proc_cpu_seconds, proc_wait_seconds

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


# -- the worker's side --------------------------------------------------------------------

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


async def read_config() -> tuple[asyncio.StreamReader, dict[str, Any]]:
    """A worker's stdin, and its configuration (the first line)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader, json.loads(await reader.readline())


def reply(message: dict[str, Any]) -> None:
    """One answer line on stdout."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve_commands(reader: asyncio.StreamReader, lifetime: float, handle: Handler) -> None:
    """Hand each command line to ``handle`` and write what it returns, until ``close``,
    the end of stdin or ``lifetime`` seconds; the worker then closes and says ``closed``."""
    try:
        async with asyncio.timeout(lifetime):
            while line := await reader.readline():
                command = json.loads(line)
                if command.get("op") == "close":
                    break
                answer = await handle(command)
                if answer is not None:
                    reply(answer)
    except TimeoutError:
        pass


class WorkerProcess:
    """One ``python -m bench.<module>`` worker, spoken to in JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._lock = asyncio.Lock()  # one request at a time: answers come in order

    @property
    def pid(self) -> int:
        return self.process.pid

    async def request(self, command: dict[str, Any], wait_seconds: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write((json.dumps(command) + "\n").encode())
            await self.process.stdin.drain()
            async with asyncio.timeout(wait_seconds):
                line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.pid} exited")
        return json.loads(line)

    async def close(self) -> None:
        process = self.process
        if process.returncode is None:
            try:
                assert process.stdin is not None
                process.stdin.write(b'{"op": "close"}\n')
                await process.stdin.drain()
                process.stdin.close()
                async with asyncio.timeout(30):
                    await process.wait()
            except (TimeoutError, ConnectionError, RuntimeError):
                pass
        if process.returncode is None:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def worker_processes(
    module: str, count: int, config: dict[str, Any]
) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` workers of ``bench.<module>``, each sent ``config`` plus its index
    (``"worker"``); closed (then killed) on the way out."""
    workers: list[WorkerProcess] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        for i in range(count):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"bench.{module}",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                cwd=str(PACKAGE_ROOT), env=env, limit=1 << 24,
            )
            worker = WorkerProcess(process)
            workers.append(worker)
            assert process.stdin is not None
            process.stdin.write((json.dumps({**config, "worker": i}) + "\n").encode())
            await process.stdin.drain()
        yield workers
    finally:
        await asyncio.gather(*(w.close() for w in workers))


def _pids(workers: list[WorkerProcess]) -> list[int]:
    return [os.getpid(), *(w.pid for w in workers)]


def load_cpu_seconds(workers: list[WorkerProcess]) -> float:
    """CPU seconds of the load generator: this process and its workers."""
    total = 0.0
    for pid in _pids(workers):
        with contextlib.suppress(OSError):
            total += proc_cpu_seconds(pid)
    return total


def load_wait_seconds(workers: list[WorkerProcess]) -> float:
    """Seconds the generator's processes waited for a CPU another process held."""
    total = 0.0
    for pid in _pids(workers):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += proc_wait_seconds(pid)
    return total


class LagWatch:
    """How late an event loop wakes from a 50 ms sleep: a busy generator shows it.
    Run :meth:`watch` as a task in each worker; :meth:`take` reads and resets."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def watch(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.05)
            self.lags.append((time.monotonic() - t0 - 0.05) * 1000)
            if len(self.lags) > 100_000:
                del self.lags[:50_000]

    def take(self) -> dict[str, float]:
        """``{"lag_p99_ms", "lag_max_ms"}`` since the last call."""
        lags = sorted(self.lags)
        self.lags = []
        p99 = lags[int(0.99 * (len(lags) - 1))] if lags else 0.0
        return {"lag_max_ms": round(lags[-1], 1) if lags else 0.0, "lag_p99_ms": round(p99, 1)}


def add_load_options(p: argparse.ArgumentParser) -> None:
    """The generator's options every stepped bench shares."""
    p.add_argument("--load-cores", type=int, help="cores of the generator (default: its affinity)")
    p.add_argument("--max-load-cpu", type=float, default=85.0,
                   help="generator CPU percent of its cores above which a step is not valid")
    p.add_argument("--max-lag-ms", type=float, default=50.0,
                   help="generator event-loop lag p99 above which a step is not valid")
    p.add_argument("--max-server-wait", type=float, default=20.0,
                   help="server CPU-wait percent above which a step is flagged contended")


def load_cores(args: argparse.Namespace) -> int:
    return args.load_cores or len(os.sched_getaffinity(0))


def generator_saturated(args: argparse.Namespace, load_pct: float) -> str | None:
    """Why the generator was the bottleneck by its CPU (``load_pct`` of one core, summed
    over its processes, above ``--max-load-cpu`` of its cores), or None."""
    cores = load_cores(args)
    if load_pct / cores > args.max_load_cpu:
        return f"generator CPU {load_pct / cores:.0f}% of its {cores} core(s) > {args.max_load_cpu:.0f}%"
    return None


def not_valid_reasons(args: argparse.Namespace, load_pct: float, lag_p99_ms: float) -> list[str]:
    """Why a step's latencies would be the generator's rather than the server's:
    its CPU (``load_pct`` of one core, summed over its processes) above
    ``--max-load-cpu`` of its cores, or its loops' lag p99 above ``--max-lag-ms``."""
    reasons = []
    saturated = generator_saturated(args, load_pct)
    if saturated:
        reasons.append(saturated)
    if lag_p99_ms > args.max_lag_ms:
        reasons.append(f"generator loop lag p99 {lag_p99_ms} ms > {args.max_lag_ms} ms")
    return reasons


def contended(args: argparse.Namespace, server_wait_pct: float | None) -> str | None:
    """A note when the server waited for a CPU other processes held."""
    if server_wait_pct is not None and server_wait_pct > args.max_server_wait:
        return (f"the server waited {server_wait_pct:.0f}% of the time for a CPU other "
                "processes held: its latencies include that wait")
    return None
