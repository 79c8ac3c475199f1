"""bench.fanout against a real server: a short run with few viewers and the
naive reference relay, producing well-formed JSON, a chart and a table."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import BenchServer, run_bench

STEP_KEYS = {
    "viewers", "delivered_pps", "server_cpu_pct", "server_cpu_us_per_packet", "loss_pct",
    "join_p50_ms", "join_p95_ms", "server_rss_mb",
}


def test_fanout_with_reference_writes_json_chart_and_table(
    bench_server: BenchServer, tmp_path: Path
) -> None:
    out = tmp_path / "fanout.json"
    token = bench_server.token(room="bench-fanout", publish=True, subscribe=True)
    result = run_bench(
        "fanout", "--url", bench_server.url, "--token", token, "--room", "bench-fanout",
        "--server-pid", str(bench_server.pid), "--viewers", "1,3", "--duration", "2",
        "--settle", "1", "--workers", "2", "--reference", "--reference-viewers", "1",
        "--out", str(out), timeout=90,
    )
    data = json.loads(out.read_text())
    steps = data["steps"]
    assert [s["viewers"] for s in steps] == [1, 3]
    for step in steps:
        assert STEP_KEYS <= step.keys()
        assert step["delivered_pps"] > 100  # video and audio to every viewer
        assert step["server_cpu_us_per_packet"] > 0
        assert step["join_failures"] == 0
        assert step["server_forwarded_pps"] > 0  # the server's own counter agrees it forwarded
    # three viewers get about three times what one gets
    assert 2.2 < steps[1]["delivered_pps"] / steps[0]["delivered_pps"] < 3.8
    assert data["capacity_viewers"] == 3
    reference = data["reference"]
    assert reference["steps"][0]["delivered_pps"] > 0
    assert data["reference_cpu_ratio"] is not None and data["reference_cpu_ratio"] > 1
    assert (tmp_path / "fanout.png").stat().st_size > 1000
    assert "capacity: 3 viewers" in result.stdout


def test_fanout_simulcast_reports_the_layer_mix(bench_server: BenchServer, tmp_path: Path) -> None:
    out = tmp_path / "simulcast.json"
    token = bench_server.token(room="bench-simulcast", publish=True, subscribe=True)
    run_bench(
        "fanout", "--url", bench_server.url, "--token", token, "--room", "bench-simulcast",
        "--server-pid", str(bench_server.pid), "--viewers", "4", "--duration", "3",
        "--settle", "3", "--workers", "1", "--simulcast", "--low-share", "0.5",
        "--low-kbps", "250", "--out", str(out), timeout=150,
    )
    data = json.loads(out.read_text())
    assert data["publisher"]["layers_kbps"][0] < data["publisher"]["layers_kbps"][2]
    step = data["steps"][0]
    assert step["join_failures"] == 0 and step["delivered_pps"] > 0
    assert sum(step["layers"].values()) == 4
    # two viewers say 250 kbit/s: they are not on the top layer; the other two are
    assert step["layers"]["f"] == 2
    assert step["switches_per_viewer_min"] is not None
