"""bench.recording against a real server process: a short round gives the CPU
of a viewer and of a recording, and the recording completes."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import BenchServer, run_bench


def test_recording_bench_measures_a_viewer_and_a_recording(bench_server: BenchServer, tmp_path: Path) -> None:
    out = tmp_path / "recording.json"
    token = bench_server.token(room="bench-rec", publish=True, subscribe=True)
    result = run_bench(
        "recording", "--url", bench_server.url, "--token", token, "--server-pid", str(bench_server.pid),
        "--room", "bench-rec", "--rounds", "1", "--settle", "1", "--duration", "2", "--out", str(out),
        timeout=90,
    )
    data = json.loads(out.read_text())
    [row] = data["rounds"]
    assert row["status"] == "complete" and row["file_kbps"] > 500
    assert row["publisher_cpu_pct"] > 0 and row["recording_cpu_pct"] > 0
    assert "recording costs" in result.stdout
