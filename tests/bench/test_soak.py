"""bench.soak against a real server: a short run churns every kind of client and
reports RSS, file descriptors, tasks, sessions and sockets at each sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench.conftest import REPO, BenchServer


def test_a_short_soak_churns_and_samples(bench_server: BenchServer, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--url", bench_server.url, "--server-pid", str(bench_server.pid),
         "--minutes", "0.5", "--interval", "10", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: something grew, which 30 s cannot judge
    report = json.loads(out.read_text())
    assert len(report["samples"]) == 4  # at 0, 10, 20 and 30 s
    for sample in report["samples"]:
        assert sample["rss_mb"] > 0 and sample["fds"] > 0 and sample["tasks"] > 0
    assert max(s["sessions"] for s in report["samples"]) > 0  # media was live
    assert report["done"].get("watch", 0) > 0 and report["done"].get("call", 0) > 0
    assert report["done"].get("chat_and_gift", 0) > 0
    assert set(report["growth"]) == {"rss_mb", "fds", "tasks"}
    # when the churn stops, its sessions and sockets are gone again
    assert report["after_churn"]["sessions"] == 0 and report["after_churn"]["sockets"] == 0
