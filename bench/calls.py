"""bench.calls: concurrent 1:1 calls with media through the SFU, their set-up in phases,
and how punctual the call timers are, with the load generator's own cost beside the server's.

The call parties live in ``--workers`` processes (bench/call_worker.py), their sockets spread
over ``--sources`` loopback addresses so ``airwave serve --workers N`` (which hands
connections to workers by client address) reaches every worker. ``--calls`` pairs of users
each place a call (``call:initiate``, ``--rate`` calls a second, 0: all at once), the callee
answers on ``call:incoming``, and both parties join the call's media (``call:sdp_offer``
with a sendrecv aiortc peer sending pre-encoded Opus, and 320x240 VP8 with ``--media video``,
until ``--media-seconds`` after the other party got its first frame, then silence: nothing is
encoded per party, and aiortc's decoding of what it receives stays bounded).

The set-up is reported in phases, each p50/p95/p99 in milliseconds, so the slow one is named:

* signaling: ``initiate_ack`` (call:initiate to its ack), ``ringing`` (call:initiate to
  call:incoming at the callee), ``answer_ack`` (call:answer to its ack), ``answered``
  (call:answer to call:answered at the caller)
* media, per party, each from the end of the one before: ``offer_ack`` (call:sdp_offer to
  the server's answer), ``ice`` (to ICE connected), ``dtls`` (to DTLS connected),
  ``first_frame`` (to the first decoded frame of the other party: video in video calls)
* ``setup``: call:initiate to the first frame of the other party at both sides

``--ring-calls`` more pairs place calls that nobody answers: the server ends them as
``missed`` at ``ringsUntil``; answered calls end as ``timeout`` at ``endsAt`` when the server
has a call duration. The lateness of each ``call:ended`` after its deadline is reported
(p50/p95/p99). Run it against a server with short timers to see them in a short run, e.g.
``AIRWAVE_RING_TIMEOUT=5 AIRWAVE_CALL_DURATION=15``. Calls still going at the end of
``--duration`` are hung up.

Server CPU comes from ``/proc`` of ``--server-pid`` and its children (else /metrics), the
generator's from its own processes; when the generator used more than ``--max-load-cpu``
percent of its cores, or its loops lagged more than ``--max-lag-ms`` (p99), the run is marked
NOT VALID: its latencies would be the bench's own.

    taskset -c 0 airwave serve ...            # the server on core 0, its pid as PID
    taskset -c 1 python -m bench.calls --url http://127.0.0.1:8080 --server-pid PID \\
        --calls 100 --ring-calls 100 --duration 30 --out calls.json

Users: ``--tokens-file`` (two per call) or the development sign-in. When the
server requires matches (AIRWAVE_REQUIRE_MATCH), ``--token`` must be an admin
token: the pairs are matched with ``PUT /api/v1/matches``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import aiohttp

from .load import (
    add_load_options,
    contended,
    load_cores,
    load_cpu_seconds,
    load_wait_seconds,
    not_valid_reasons,
    worker_processes,
)
from .report import finite, format_table, percentile, run_script
from .server_probe import ServerProbe, tree_wait_seconds
from .user_tokens import user_tokens

SIGNAL_PHASES = ["initiate_ack", "ringing", "answer_ack", "answered_at_caller"]
MEDIA_PHASES = ["offer_ack", "ice", "dtls", "first_frame"]


async def match(http: aiohttp.ClientSession, url: str, token: str, a: str, b: str) -> None:
    async with http.put(f"{url}/api/v1/matches", json={"userA": a, "userB": b},
                        headers={"Authorization": f"Bearer {token}"}) as r:
        if r.status >= 300:
            raise RuntimeError(f"PUT /api/v1/matches: HTTP {r.status}: {await r.text()}")


def summary(values: list[float | None]) -> dict[str, Any]:
    """``{"n", "missing", "p50_ms", "p95_ms", "p99_ms"}`` of one phase."""
    got = [v for v in values if v is not None]
    return {"n": len(got), "missing": len(values) - len(got),
            **{f"p{p}_ms": finite(percentile(got, p), 1) for p in (50, 95, 99)}}


def phases(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every phase of the set-up over every call (media phases over both parties)."""
    answered = [c for c in calls if c["answered"]]
    out = {name: summary([c[name] for c in calls]) for name in SIGNAL_PHASES[:2]}
    for name in SIGNAL_PHASES[2:]:
        out[name] = summary([c[name] for c in answered])
    for name in MEDIA_PHASES:
        out[name] = summary([p[name] for c in answered for p in c["parties"]])
    out["first_frame_one_way"] = summary([v for c in answered for v in c["first_frame_one_way"]])
    out["setup"] = summary([c["setup"] for c in answered])
    out["answer_to_media"] = summary([c["answer_to_media"] for c in answered])
    return out


def slowest(table: dict[str, dict[str, Any]]) -> str | None:
    """The phase (of the steps that add up to the set-up) with the largest p95."""
    steps = [n for n in ["ringing", "answer_ack", *MEDIA_PHASES]
             if table.get(n, {}).get("p95_ms") is not None]
    return max(steps, key=lambda n: table[n]["p95_ms"]) if steps else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.url.rstrip("/")
    pairs_total = args.calls + args.ring_calls
    sources = [s for s in args.sources.split(",") if s]
    cores = load_cores(args)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        probe = ServerProbe(http, url, args.server_pid)
        users = await user_tokens(http, url, 2 * pairs_total, tokens_file=args.tokens_file,
                                  prefix=f"bench-call-{uuid.uuid4().hex[:4]}-")
        if len({u.user_id for u in users}) < len(users):
            raise SystemExit(f"bench.calls needs {len(users)} distinct users (two per call)")
        pairs = [(users[2 * i], users[2 * i + 1], i < args.calls) for i in range(pairs_total)]
        if args.token:
            await asyncio.gather(*(match(http, url, args.token, a.user_id, b.user_id)
                                   for a, b, _ in pairs))
        workers_count = max(1, min(args.workers, pairs_total))
        config = {"url": url, "sources": sources, "media": args.media,
                  "media_seconds": args.media_seconds, "lifetime": args.duration + 300,
                  "ice_addresses": [a.strip() for a in args.ice_address.split(",") if a.strip()]}
        async with worker_processes("call_worker", workers_count, config) as workers:
            # pair i goes to worker i % W; both parties of a pair in the same worker
            shares: list[list[tuple[Any, Any, bool]]] = [pairs[w::workers_count]
                                                         for w in range(workers_count)]
            replies = await asyncio.gather(*(
                w.request({"op": "connect", "users": [[u.user_id, u.token] for a, b, _ in share
                                                      for u in (a, b)]}, 60 + len(share))
                for w, share in zip(workers, shares, strict=True)))
            connect_errors = [e for r in replies for e in r["errors"]]
            start_at = time.monotonic() + 0.5
            until = start_at + args.duration
            sample_a, load_a = await probe.sample(), load_cpu_seconds(workers)
            waits_a = (tree_wait_seconds(args.server_pid) if args.server_pid else None,
                       load_wait_seconds(workers))
            # worker w's k-th call is call k*W+w of the whole run: --rate spreads all of them
            per_worker_rate = args.rate / workers_count if args.rate > 0 else 0.0
            ran = await asyncio.gather(*(
                w.request({"op": "run", "pairs": [[2 * k, 2 * k + 1, answer]
                                                  for k, (_, _, answer) in enumerate(share)],
                           "start_at": start_at + (i / args.rate if args.rate > 0 else 0.0),
                           "rate": per_worker_rate, "until": until},
                          args.duration + 120)
                for i, (w, share) in enumerate(zip(workers, shares, strict=True))))
            sample_b, load_b = await probe.sample(), load_cpu_seconds(workers)
            elapsed = sample_b.at - sample_a.at
            server_wait = (None if waits_a[0] is None else
                           (tree_wait_seconds(args.server_pid) - waits_a[0]) / elapsed * 100)
            load_wait = (load_wait_seconds(workers) - waits_a[1]) / elapsed * 100

    calls = [c for r in ran for c in r["calls"]]
    errors = connect_errors + [e for r in ran for e in r["errors"]]
    table = phases(calls)
    ring_late = [c["ring_late"] for c in calls if "ring_late" in c]
    call_late = [c["call_late"] for c in calls if "call_late" in c]
    server_cpu = (None if sample_a.cpu_seconds is None or sample_b.cpu_seconds is None
                  else (sample_b.cpu_seconds - sample_a.cpu_seconds) / elapsed * 100)
    load_pct = (load_b - load_a) / elapsed * 100
    lag_p99 = max(r["lag_p99_ms"] for r in ran)
    reasons = not_valid_reasons(args, load_pct, lag_p99)
    result: dict[str, Any] = {
        "script": "bench.calls",
        "url": url,
        "calls": args.calls,
        "ring_calls": args.ring_calls,
        "rate": args.rate,
        "media": args.media,
        "workers": workers_count,
        "sources": sources,
        "calls_with_media_both_ways": sum(1 for c in calls if c.get("setup") is not None),
        "parties_with_media": sum(1 for c in calls if c["answered"]
                                  for v in c["first_frame_one_way"] if v is not None),
        "server_offers": sum(c.get("server_offers", 0) for c in calls),
        "phases": table,
        "slowest_phase_p95": slowest(table),
        "setup_p50_ms": table["setup"]["p50_ms"],
        "setup_p95_ms": table["setup"]["p95_ms"],
        "setup_p99_ms": table["setup"]["p99_ms"],
        "answer_to_media_p95_ms": table["answer_to_media"]["p95_ms"],
        "ring_timeouts": len(ring_late),
        "ring_timeout_late": summary(ring_late),
        "call_timeouts": len(call_late),
        "call_timeout_late": summary(call_late),
        "ended_reasons": _count(c["reason"] for c in calls if c["reason"]),
        "hung_up_at_end": sum(r["hung_up"] for r in ran),
        "seconds": round(elapsed, 2),
        "server_cpu_pct": finite(server_cpu, 1),
        "server_cpu_wait_pct": finite(server_wait, 1),
        "load_cpu_pct": round(load_pct, 1),
        "load_cpu_pct_of_cores": round(load_pct / cores, 1),
        "load_cores": cores,
        "load_lag_p99_ms": lag_p99,
        "load_lag_max_ms": max(r["lag_max_ms"] for r in ran),
        "load_cpu_wait_pct": round(load_wait, 1),
        "loadavg": os.getloadavg(),
        "valid": not reasons,
        "errors": errors[:10],
    }
    if reasons:
        result["not_valid"] = "; ".join(reasons)
    note = contended(args, server_wait)
    if note:
        result["contended"] = note
    return result


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


PHASE_COLUMNS = [("phase", "phase"), ("n", "n"), ("missing", "missing"), ("p50_ms", "p50 ms"),
                 ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms")]
COLUMNS = [("calls_with_media_both_ways", "calls w/ media"), ("ring_timeouts", "missed"),
           ("call_timeouts", "timed out"), ("hung_up_at_end", "hung up"),
           ("server_cpu_pct", "srv cpu%"), ("server_cpu_wait_pct", "srv wait%"),
           ("load_cpu_pct_of_cores", "load cpu%"), ("load_lag_p99_ms", "load lag p99"),
           ("valid", "valid")]


def phase_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"phase": name, **values} for name, values in result["phases"].items()]
    rows += [{"phase": "ring timer late", **result["ring_timeout_late"]},
             {"phase": "call timer late", **result["call_timeout_late"]}]
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", help="admin token: matches the pairs (needed with AIRWAVE_REQUIRE_MATCH)")
    p.add_argument("--tokens-file", help="one user token per line, two per call")
    p.add_argument("--calls", type=int, default=10, help="answered calls with media (default 10)")
    p.add_argument("--ring-calls", type=int, default=10, help="calls left ringing (default 10)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="calls placed a second, over all workers (default 0: all at once)")
    p.add_argument("--media", choices=["audio", "video"], default="audio",
                   help="what the answered calls carry (default audio)")
    p.add_argument("--media-seconds", type=float, default=1.0,
                   help="seconds each party goes on sending once the other party got its "
                        "first frame (default 1)")
    p.add_argument("--duration", type=float, default=40.0,
                   help="seconds to wait for the timers before hanging up (default 40)")
    p.add_argument("--workers", type=int, default=2, help="call worker processes (default 2)")
    p.add_argument("--sources", default="127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4",
                   help="loopback source addresses the sockets spread over")
    p.add_argument("--server-pid", type=int, help="server pid for CPU from /proc (else /metrics)")
    p.add_argument("--ice-address", default="127.0.0.1", help="addresses the peers gather")
    add_load_options(p)
    p.add_argument("--out", default="calls.json")
    p.add_argument("--chart", help="unused; kept for the common bench options")
    args = p.parse_args(argv)
    if args.calls < 0 or args.ring_calls < 0 or args.calls + args.ring_calls < 1:
        p.error("at least one call")
    if args.workers < 1 or args.rate < 0:
        p.error("--workers must be positive and --rate not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, _ = run_script("calls", args, run)
    print(format_table(phase_rows(result), PHASE_COLUMNS))
    print(format_table([result], COLUMNS))
    if result["slowest_phase_p95"]:
        print(f"slowest phase (p95): {result['slowest_phase_p95']}")
    if result["errors"]:
        print(f"errors: {result['errors']}")
    if not result["valid"]:
        print(f"NOT VALID: {result['not_valid']}")
    if result.get("contended"):
        print(f"contended: {result['contended']}")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
