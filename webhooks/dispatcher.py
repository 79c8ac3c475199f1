"""Delivering the outbox: one dispatcher task per node.

Each pass claims due rows with one conditional UPDATE that sets a lease
(``lease_owner``, ``lease_until``): on PostgreSQL two nodes racing for a row
serialise on its row lock and the loser's re-checked condition no longer holds,
so a row is sent by one node at a time; a node that dies holding a lease loses
it when it expires and another node sends the row. A row is due only when no
earlier row of its key and endpoint is still pending, so events of one key are
sent in order, one at a time; a dead-lettered (``failed``) row no longer holds
back the ones after it.

A delivery is a POST of the event's JSON with ``X-Airwave-Timestamp`` and
``X-Airwave-Signature`` (one ``sha256=`` per secret of the endpoint); any 2xx
is delivered. Otherwise it is tried again after an exponential backoff (1 s
doubling up to 10 min, with jitter) until ``webhook_retry_for`` has passed
since it was written; then it is dead-lettered. Delivered rows are deleted
after ``webhook_retention``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import aiohttp
from prometheus_client import Counter, Gauge

from config import Settings, WebhookEndpoint
from store import Database, Row
from webhooks.outbox import Outbox
from webhooks.signing import signature_header

log = logging.getLogger("airwave.webhooks")

BATCH = 100
CONCURRENCY = 16
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 600.0
SWEEP_EVERY = 60.0
METRICS_EVERY = 5.0
MAX_ERROR = 300

WEBHOOKS_QUEUED = Gauge("airwave_webhooks_queued", "Outgoing webhook deliveries waiting (pending)")
WEBHOOKS_FAILED = Gauge("airwave_webhooks_failed", "Outgoing webhook deliveries dead-lettered")
WEBHOOKS_OLDEST = Gauge(
    "airwave_webhooks_oldest_age_seconds", "Age of the oldest pending outgoing webhook delivery"
)
WEBHOOKS_DELIVERED = Counter("airwave_webhooks_delivered", "Outgoing webhooks delivered (2xx)")
WEBHOOK_ATTEMPTS_FAILED = Counter(
    "airwave_webhook_attempts_failed", "Outgoing webhook attempts that failed (each retry counts)"
)
WEBHOOKS_DEAD = Counter("airwave_webhooks_dead_lettered", "Outgoing webhooks given up on")

_CLAIM = (
    "UPDATE webhook_outbox SET lease_owner = $1, lease_until = $2"
    " WHERE id IN ("
    "  SELECT o.id FROM webhook_outbox o"
    "  WHERE o.status = 'pending' AND o.next_at <= $3"
    "  AND (o.lease_until IS NULL OR o.lease_until < $3)"
    "  AND NOT EXISTS (SELECT 1 FROM webhook_outbox p WHERE p.endpoint = o.endpoint"
    "   AND p.event_key = o.event_key AND p.status = 'pending' AND p.seq < o.seq)"
    "  ORDER BY o.next_at LIMIT $4)"
    " AND status = 'pending' AND (lease_until IS NULL OR lease_until < $3)"
    " RETURNING id, endpoint, payload, attempts, give_up_at, event_type"
)


def backoff(attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: doubling from 1 s, at most 10 min, +-20 %."""
    delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(attempts - 1, 20))
    return delay * random.uniform(0.8, 1.2)


class WebhookDispatcher:
    def __init__(self, db: Database, settings: Settings, outbox: Outbox, node_id: str) -> None:
        self.db = db
        self.outbox = outbox
        self.node_id = node_id or "node"
        self.timeout = settings.webhook_timeout
        self.poll_interval = settings.webhook_poll_interval
        self.retention = settings.webhook_retention
        self.lease = settings.webhook_timeout + 5.0
        self.endpoints: dict[str, WebhookEndpoint] = {e.url: e for e in settings.webhook_urls}
        self._http: aiohttp.ClientSession | None = None
        self._seen_written = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Finish the pass in progress, then return from :meth:`run`."""
        self._stop.set()

    async def run_when(self, ready: asyncio.Event) -> None:
        """:meth:`run` once ``ready`` is set (the schema is migrated), unless stopped first."""
        waits = [asyncio.ensure_future(ready.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if ready.is_set() and not self._stop.is_set():
            await self.run()

    async def run(self) -> None:
        """Claim and deliver until cancelled; a database that is away is waited for."""
        try:
            await self._loop()
        finally:
            await self.close()

    async def _loop(self) -> None:
        last_sweep = last_metrics = 0.0
        while not self._stop.is_set():
            try:
                delivered = await self.deliver_due()
                now = time.monotonic()
                if now - last_metrics >= METRICS_EVERY:
                    last_metrics = now
                    await self.refresh_metrics()
                if now - last_sweep >= SWEEP_EVERY:
                    last_sweep = now
                    await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook dispatcher pass failed; trying again")
                delivered = 0
            if not delivered:
                await self._wait()

    async def _wait(self) -> None:
        """Up to one poll interval, sooner when this process wrote an event."""
        deadline = time.monotonic() + self.poll_interval
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.outbox.written != self._seen_written:
                self._seen_written = self.outbox.written
                await asyncio.sleep(0.02)  # let the writer's transaction commit
                return
            await asyncio.sleep(min(0.05, self.poll_interval))

    async def deliver_due(self) -> int:
        """One pass: claim what is due and deliver it; how many were delivered."""
        now = time.time()
        rows = await self.db.fetch(_CLAIM, self.node_id, now + self.lease, now, BATCH)
        if not rows:
            return 0
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(row: Row) -> bool:
            async with limit:
                return await self._deliver(row)

        results = await asyncio.gather(*(one(r) for r in rows))
        return sum(results)

    async def _deliver(self, row: Row) -> bool:
        endpoint = self.endpoints.get(row["endpoint"])
        if endpoint is None:
            await self._dead(row, "the endpoint is no longer configured")
            return False
        body = row["payload"].encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "airwave-webhooks",
            "X-Airwave-Timestamp": timestamp,
            "X-Airwave-Signature": signature_header(endpoint.secrets, timestamp, body),
            "X-Airwave-Event-Type": row["event_type"],
        }
        error: str
        try:
            async with self._session().post(endpoint.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    await self.db.execute(
                        "UPDATE webhook_outbox SET status = 'delivered', delivered_at = $2,"
                        " attempts = attempts + 1, lease_owner = NULL, lease_until = NULL,"
                        " last_error = NULL WHERE id = $1 AND status = 'pending'",
                        row["id"], time.time(),
                    )
                    WEBHOOKS_DELIVERED.inc()
                    return True
                error = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        WEBHOOK_ATTEMPTS_FAILED.inc()
        attempts = int(row["attempts"]) + 1
        retry_at = time.time() + backoff(attempts)
        if retry_at >= float(row["give_up_at"]):
            await self._dead(row, error)
            return False
        await self.db.execute(
            "UPDATE webhook_outbox SET attempts = $2, next_at = $3, last_error = $4,"
            " lease_owner = NULL, lease_until = NULL WHERE id = $1 AND status = 'pending'",
            row["id"], attempts, retry_at, error[:MAX_ERROR],
        )
        return False

    async def _dead(self, row: Row, error: str) -> None:
        log.warning("webhook %s to %s dead-lettered: %s", row["id"], row["endpoint"], error)
        WEBHOOKS_DEAD.inc()
        await self.db.execute(
            "UPDATE webhook_outbox SET status = 'failed', attempts = attempts + 1, last_error = $2,"
            " lease_owner = NULL, lease_until = NULL WHERE id = $1 AND status = 'pending'",
            row["id"], error[:MAX_ERROR],
        )

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            )
        return self._http

    async def sweep(self) -> int:
        """Delete delivered rows older than the retention; how many went."""
        return await self.db.execute(
            "DELETE FROM webhook_outbox WHERE status = 'delivered' AND delivered_at < $1",
            time.time() - self.retention,
        )

    async def refresh_metrics(self) -> dict[str, Any]:
        backlog = await self.outbox.backlog()
        WEBHOOKS_QUEUED.set(backlog["queued"])
        WEBHOOKS_FAILED.set(backlog["failed"])
        WEBHOOKS_OLDEST.set(backlog["oldestAgeSeconds"])
        return backlog

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
