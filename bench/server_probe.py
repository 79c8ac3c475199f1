"""What the server spends: CPU seconds and RSS from ``/proc/<pid>`` (when the
server runs on this machine) or from the Prometheus process collector on
``/metrics`` (``process_cpu_seconds_total``, ``process_resident_memory_bytes``),
plus the SFU's own forwarded-packet counter for a cross-check."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import aiohttp

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ServerSample:
    at: float  # monotonic seconds
    cpu_seconds: float | None
    rss_bytes: int | None
    forwarded_packets: float | None  # airwave_sfu_forwarded_packets_total, when exposed


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


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
            cpu: float | None = proc_cpu_seconds(self.pid)
            rss: int | None = proc_rss_bytes(self.pid)
        else:
            cpu = metrics.get("process_cpu_seconds_total")
            rss_value = metrics.get("process_resident_memory_bytes")
            rss = int(rss_value) if rss_value is not None else None
        return ServerSample(at, cpu, rss, metrics.get("airwave_sfu_forwarded_packets_total"))
