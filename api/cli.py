"""The ``airwave`` command line: serve, token, migrate."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any

from config import ConfigError, Settings, load_settings

log = logging.getLogger("airwave")


def _settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    try:
        return load_settings(config_file=getattr(args, "config", None), **overrides)
    except ConfigError as exc:
        print(f"airwave: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _describe(settings: Settings) -> list[str]:
    if settings.database_backend == "sqlite":
        db = f"SQLite at {settings.effective_database_url.removeprefix('sqlite:///')} (embedded)"
    else:
        db = "PostgreSQL"
    bus = "Redis" if settings.redis_url else "in-process (embedded)"
    stun = f"embedded STUN on UDP {settings.stun_port}" if settings.stun_port else "embedded STUN off"
    turn = f"TURN {', '.join(settings.turn_urls)}" if settings.turn_urls else "no TURN"
    return [f"database: {db}", f"event bus and timers: {bus}", f"ICE: {stun}, {turn}"]


# The cyclic collector's first threshold: Python's 700 made a connection ramp of 1,500
# sockets run 377 young collections, 34 middle ones and 3 full ones of up to 148 ms.
YOUNG_COLLECTION_THRESHOLD = 10_000


def _tune_collector() -> None:
    """Once start-up is done: move what it built (modules, the app, the media engine,
    about 85,000 objects that live as long as the process) out of the collector's
    generations, and collect the young generation less often. A full collection walked
    everything again whenever the long-lived objects grew by a quarter: while sockets
    arrive, that is every few hundred connections, with the event loop (media included)
    stopped for up to 150 ms at 1,500 sockets. With these, the same ramp ran 26 young
    and 2 middle collections, no full one, and connect + join cost 10 % less CPU."""
    gc.collect()
    gc.freeze()
    _, middle, full = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, full)


async def _serve(settings: Settings, worker_fd: int | None = None, internal_fd: int | None = None) -> None:
    """One node: its own listening socket, or (as a worker) connections handed
    over by the supervisor through ``worker_fd`` plus its own listener for other
    nodes, ``internal_fd``."""
    from aiohttp import web

    from api.app import airwave_version, create_app
    from api.workers import LISTEN_BACKLOG, adopt_connections

    # Signals first: a SIGTERM that arrives during start-up still stops us cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.dev:
        log.warning(
            "airwave %s starting in DEVELOPMENT mode: anyone may take a demo token "
            "(POST /api/v1/dev/token) with publish rights on every room and welcome coins; "
            "never expose this node", airwave_version(),
        )
    else:
        log.info("airwave %s starting in production mode (no demo sign-in)", airwave_version())
    for line in _describe(settings):
        log.info(line)
    # A worker's STUN server is the supervisor's.
    app = await create_app(settings, serve_stun=worker_fd is None)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    _tune_collector()
    shown_host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    adopting: asyncio.Task[None] | None = None
    if worker_fd is None:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True,
                           backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc)
            raise SystemExit(1) from None
        log.info("listening on http://%s:%s/ (bound to %s)", shown_host, settings.port, settings.host)
    else:
        assert runner.server is not None
        adopting = loop.create_task(adopt_connections(worker_fd, runner.server))
        adopting.add_done_callback(lambda task: _supervisor_gone(task, stop))
        if internal_fd is not None:
            await web.SockSite(runner, socket.socket(fileno=internal_fd)).start()
        log.info("worker %s serving http://%s:%s/", settings.node_id, shown_host, settings.port)

    await stop.wait()
    log.info("shutting down")
    if adopting is not None:
        adopting.cancel()
        await asyncio.gather(adopting, return_exceptions=True)
    await runner.cleanup()
    log.info("stopped")


SUPERVISOR_GONE_EXIT = 0.8  # seconds a worker whose supervisor died gets to wind down


def _supervisor_gone(adopting: asyncio.Task[None], stop: asyncio.Event) -> None:
    """The supervisor's end of the channel closed (whatever killed it, SIGKILL too):
    nobody hands us connections or restarts us. Stop, and exit within a second."""
    if adopting.cancelled():
        return  # our own shutdown
    log.error("the supervisor is gone: this worker exits")
    stop.set()
    asyncio.get_running_loop().call_later(SUPERVISOR_GONE_EXIT, os._exit, 1)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args, host=args.host, port=args.port, dev=args.dev or None)
    from api.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    import uvloop

    workers = args.workers
    if workers is None:
        workers = (os.cpu_count() or 1) if settings.redis_url and args.worker_fd is None else 1
    if workers > 1:
        if not settings.redis_url or settings.database_backend != "postgresql":
            print(
                "airwave: configuration error: --workers: several workers need AIRWAVE_REDIS_URL "
                "and a PostgreSQL AIRWAVE_DATABASE_URL (they share the bus, timers and data)",
                file=sys.stderr,
            )
            return 2
        from api.workers import Supervisor

        return uvloop.run(Supervisor(settings, workers, args.config).run())
    uvloop.run(_serve(settings, args.worker_fd, args.internal_fd))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from auth import Grants, TokenError, TokenService

    settings = _settings_from(args)
    grants = Grants(
        room=args.room, publish=args.publish, subscribe=args.subscribe, admin=args.admin
    )
    try:
        token = TokenService(settings).mint(args.user, name=args.name or "", grants=grants, ttl=args.ttl)
    except TokenError as exc:
        print(f"airwave: {exc.message}", file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from api.logs import configure_logging
    from store import Database, migrate

    settings = _settings_from(args)
    configure_logging(settings.log_format, settings.log_level)

    async def run() -> list[int]:
        db = await Database.connect(settings)
        try:
            return await migrate(db)
        finally:
            await db.close()

    applied = asyncio.run(run())
    print(f"applied {len(applied)} migration(s): {applied}" if applied else "schema is up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airwave", description="Realtime media and signaling server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to bind (default 0.0.0.0, AIRWAVE_HOST)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8080, AIRWAVE_PORT)")
    serve.add_argument("--config", help="TOML settings file (AIRWAVE_CONFIG)")
    serve.add_argument(
        "--workers", type=int,
        help="node processes behind the one HTTP port (default: one per core with Redis, else 1)",
    )
    serve.add_argument(
        "--dev", action="store_true",
        help="development mode: demo sign-in for the web app (AIRWAVE_DEV); never on a public node",
    )
    serve.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--internal-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="print an access token")
    token.add_argument("--user", required=True, help="user id (sub)")
    token.add_argument("--name", help="display name")
    token.add_argument("--room", help="room id the grants cover, or *")
    token.add_argument("--publish", action="store_true")
    token.add_argument("--subscribe", action="store_true")
    token.add_argument("--admin", action="store_true")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--config", help="TOML settings file")
    token.set_defaults(func=cmd_token)

    mig = sub.add_parser("migrate", help="apply database migrations and exit")
    mig.add_argument("--config", help="TOML settings file")
    mig.set_defaults(func=cmd_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
