"""What the server spends: CPU seconds and RSS from ``/proc/<pid>`` and its
child processes (when the server runs on this machine) or from the Prometheus process collector on
``/metrics`` (``process_cpu_seconds_total``, ``process_resident_memory_bytes``),
plus the SFU's own forwarded-packet counter for a cross-check."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import aiohttp

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# /proc and the Prometheus process collector count CPU in whole clock ticks (10 ms at 100 Hz):
# a figure is a measurement only over many of them
MEASURABLE_CPU_SECONDS = 10 / CLOCK_TICKS
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ServerSample:
    at: float  # monotonic seconds
    cpu_seconds: float | None
    rss_bytes: int | None
    forwarded_packets: float | None  # airwave_sfu_forwarded_packets_total, when exposed
    layer_switches: float | None = None  # airwave_sfu_layer_switches_total, when exposed


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def proc_wait_seconds(pid: int) -> float:
    """Seconds the main thread of ``pid`` was runnable but waiting for a CPU
    (``/proc/<pid>/schedstat``, second field): time another process took from it."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def tree_wait_seconds(pid: int) -> float:
    """:func:`proc_wait_seconds` summed over ``pid`` and its live descendants."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += proc_wait_seconds(member)
        except (OSError, ValueError, IndexError):
            continue
    return total


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``airwave serve --workers N`` runs a
    supervisor and N worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS bytes of ``pid`` and its descendants (those alive now)."""
    cpu, rss = 0.0, 0
    for member in process_tree(pid):
        try:
            cpu += proc_cpu_seconds(member)
            rss += proc_rss_bytes(member)
        except OSError:
            continue  # it just ended
    return cpu, rss


def parse_metrics(text: str) -> dict[str, float]:
    """Sum each metric's samples over its labels."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_labels, _, rest = line.partition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        values[name] = values.get(name, 0.0) + value
    return values


class ServerProbe:
    def __init__(self, http: aiohttp.ClientSession, url: str, pid: int | None) -> None:
        self.http = http
        self.metrics_url = url.rstrip("/") + "/metrics"
        self.pid = pid
        self.metrics_ok = True

    async def metrics(self) -> dict[str, float]:
        if not self.metrics_ok:
            return {}
        try:
            async with self.http.get(self.metrics_url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    self.metrics_ok = False
                    return {}
                return parse_metrics(await r.text())
        except (aiohttp.ClientError, TimeoutError):
            self.metrics_ok = False
            return {}

    async def sample(self) -> ServerSample:
        metrics = await self.metrics()
        at = time.monotonic()
        if self.pid is not None:
            tree_cpu, tree_rss = tree_usage(self.pid)
            cpu: float | None = tree_cpu
            rss: int | None = tree_rss
        else:
            cpu = metrics.get("process_cpu_seconds_total")
            rss_value = metrics.get("process_resident_memory_bytes")
            rss = int(rss_value) if rss_value is not None else None
        return ServerSample(at, cpu, rss, metrics.get("airwave_sfu_forwarded_packets_total"),
                            metrics.get("airwave_sfu_layer_switches_total"))
