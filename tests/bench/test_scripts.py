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
        "signaling", "--url", production_like_server.url, "--connections", "12", "--senders", "3",
        "--rate", "6", "--duration", "2", "--drain", "3", "--server-pid",
        str(production_like_server.pid), "--out", str(out),
    )
    data = json.loads(out.read_text())
    assert data["connected"] == 12 and data["connect_failures"] == 0
    assert data["messages_sent"] >= 8
    assert data["deliveries"] == data["messages_sent"] * 12  # the whole room, the senders too
    assert data["deliveries_missing"] == 0
    assert 0 < data["delivery_p50_ms"] <= data["delivery_p99_ms"] < 2000
    assert data["connect_rate_per_s"] > 0
    assert "deliveries/s" in result.stdout
    assert (tmp_path / "signaling.png").stat().st_size > 1000


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
