"""bench.signaling, bench.gifts and bench.calls against a real server on
PostgreSQL and Redis: short runs with small numbers, well-formed JSON with
deliveries, and what each checks (books, timers) holding."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import CALL_DURATION, PG_URL, WEBHOOK_SECRET, BenchServer, run_bench


def test_signaling_delivers_every_message_to_every_socket(
    production_like_server: BenchServer, tmp_path: Path
) -> None:
    out = tmp_path / "signaling.json"
    result = run_bench(
        "signaling", "--url", production_like_server.url, "--steps", "8:6,12:6", "--senders", "3",
        "--duration", "2", "--idle", "0.5", "--drain", "3", "--workers", "2",
        "--server-pid", str(production_like_server.pid), "--max-load-cpu", "101",
        "--max-lag-ms", "100000", "--out", str(out),
    )
    data = json.loads(out.read_text())
    assert [s["sockets"] for s in data["steps"]] == [8, 12]
    for step in data["steps"]:
        assert step["connect_failures"] == 0 and step["valid"]
        assert step["messages_sent"] >= 8
        # the whole room, the senders too, every message of the step
        assert step["deliveries"] == step["messages_sent"] * step["sockets"]
        assert step["deliveries_missing"] == 0
        assert 0 <= step["delivery_p50_ms"] <= step["delivery_p99_ms"] < 2000
        assert step["connect_rate_per_s"] > 0
        assert step["server_us_per_delivery"] is not None and step["load_cpu_pct"] >= 0
    assert "deliv/s" in result.stdout


def test_signaling_marks_a_saturated_generator_not_valid(
    production_like_server: BenchServer, tmp_path: Path
) -> None:
    out = tmp_path / "signaling.json"
    # any generator CPU is above -1 %: 0 would let a quiet run (under one clock tick
    # of CPU in a short step) read 0 % and pass as valid
    result = run_bench(
        "signaling", "--url", production_like_server.url, "--steps", "4:4,6:4", "--senders", "2",
        "--duration", "1", "--idle", "0.2", "--drain", "2", "--workers", "1",
        "--server-pid", str(production_like_server.pid), "--max-load-cpu", "-1",
        "--out", str(out),
    )
    data = json.loads(out.read_text())
    assert len(data["steps"]) == 1  # stepping stopped at the first step that was not valid
    assert data["steps"][0]["valid"] is False and "generator CPU" in data["steps"][0]["not_valid"]
    assert "NOT VALID" in result.stdout


def test_gifts_on_postgresql_keep_the_books(
    production_like_server: BenchServer, tmp_path: Path
) -> None:
    out = tmp_path / "gifts.json"
    run_bench(
        "gifts", "--url", production_like_server.url, "--senders", "4", "--concurrency", "2",
        "--duration", "2", "--webhook-secret", WEBHOOK_SECRET, "--coins", "100000",
        "--database-url", PG_URL, "--database-schema", production_like_server.env["schema"],
        "--out", str(out),
    )
    data = json.loads(out.read_text())
    assert data["gifts_sent"] > 10 and data["gifts_per_s"] > 0
    assert data["refused"] == {}  # topped up: nobody ran out
    books = data["books"]
    assert books["ok"] and books["negative_balances"] == 0
    assert books["senders_spent"] == books["gifts_acked_coins"] > 0
    ledger = data["ledger"]
    assert ledger == {"entries_sum": 0, "unbalanced_transfers": 0, "negative_wallets": 0,
                      "wallets_off_ledger": 0, "ok": True}


def test_calls_set_up_media_both_ways_and_time_out_on_time(
    production_like_server: BenchServer, tmp_path: Path
) -> None:
    out = tmp_path / "calls.json"
    run_bench(
        "calls", "--url", production_like_server.url, "--calls", "2", "--ring-calls", "2",
        "--duration", str(CALL_DURATION + 6), "--out", str(out), timeout=60,
    )
    data = json.loads(out.read_text())
    assert data["errors"] == []
    # media through the SFU; not asserted both ways: when both parties join at
    # once, a race in the server's join_call can leave one side (or both) without
    # the other's tracks (bench/RESULTS.md), which is what this bench measures
    assert data["parties_with_video"] >= 1
    assert 0 < data["first_frame_one_way_p50_ms"] < 5000
    assert data["ring_timeouts"] == 2 and data["call_timeouts"] == 2
    assert data["ended_reasons"] == {"missed": 2, "timeout": 2}
    # timers fire after their deadline, and not long after
    assert -50 < data["ring_timeout_late_p50_ms"] <= data["ring_timeout_late_p99_ms"] < 1500
    assert -50 < data["call_timeout_late_p50_ms"] <= data["call_timeout_late_p99_ms"] < 1500
    assert data["hung_up_at_end"] == 0
