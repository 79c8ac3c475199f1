"""bench.signaling, bench.gifts and bench.calls against a real server on
PostgreSQL and Redis: short runs with small numbers, well-formed JSON with
deliveries, and what each checks (books, timers) holding."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import CALL_DURATION, PG_URL, RING_TIMEOUT, WEBHOOK_SECRET, BenchServer, run_bench


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
    # and the connect phase says its rate was the generator's
    assert data["steps"][0]["connect_rate_bound_by"].startswith("the generator")
    assert "connection rate bound by the generator" in result.stdout


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


def test_calls_report_every_set_up_phase_and_time_out_on_time(
    production_like_server: BenchServer, tmp_path: Path
) -> None:
    out = tmp_path / "calls.json"
    result = run_bench(
        "calls", "--url", production_like_server.url, "--calls", "2", "--ring-calls", "2",
        "--workers", "2", "--duration", str(CALL_DURATION + 6), "--media-seconds", "2",
        "--server-pid", str(production_like_server.pid), "--max-load-cpu", "101",
        "--max-lag-ms", "100000", "--out", str(out), timeout=60,
    )
    data = json.loads(out.read_text())
    assert data["errors"] == [] and data["valid"] and data["workers"] == 2
    # every phase of the set-up, measured at every party that reached it
    phases = data["phases"]
    for name in ("initiate_ack", "ringing"):
        assert phases[name]["n"] == 4
    for name in ("answer_ack", "answered_at_caller"):
        assert phases[name]["n"] == 2
    for name in ("offer_ack", "ice", "dtls"):
        assert phases[name]["n"] == 4, name
    for name, values in phases.items():
        if values["n"]:
            assert 0 <= values["p50_ms"] <= values["p95_ms"] <= values["p99_ms"] < 10_000, name
    # media through the SFU, both ways: each party got a first frame of the other's
    assert phases["first_frame"]["n"] == 4 and data["calls_with_media_both_ways"] == 2
    assert phases["setup"]["n"] == 2 and data["slowest_phase_p95"] is not None
    # answered after it rang: the answer-to-media part of each set-up is shorter than all of it
    assert phases["answer_to_media"]["n"] == 2
    assert phases["answer_to_media"]["p50_ms"] < phases["setup"]["p50_ms"]
    assert data["ended_reasons"] == {"missed": 2, "timeout": 2}
    # timers fire after their deadline, and not long after
    ring, call = data["ring_timeout_late"], data["call_timeout_late"]
    assert ring["n"] == 2 and call["n"] == 2
    assert -50 < ring["p50_ms"] <= ring["p99_ms"] < 1500
    assert -50 < call["p50_ms"] <= call["p99_ms"] < 1500
    assert data["hung_up_at_end"] == 0
    assert data["server_cpu_pct"] is not None and data["load_cpu_pct"] >= 0
    assert "first_frame" in result.stdout and "NOT VALID" not in result.stdout


def test_calls_mark_a_saturated_generator_not_valid(
    production_like_server: BenchServer, tmp_path: Path
) -> None:
    out = tmp_path / "calls.json"
    # any generator CPU is above -1 % (see the bench.signaling test)
    result = run_bench(
        "calls", "--url", production_like_server.url, "--calls", "0", "--ring-calls", "1",
        "--workers", "1", "--duration", str(RING_TIMEOUT + 3), "--max-load-cpu", "-1",
        "--out", str(out), timeout=60,
    )
    data = json.loads(out.read_text())
    assert data["valid"] is False and "generator CPU" in data["not_valid"]
    assert "NOT VALID" in result.stdout
