"""``make test``'s runner: one private PostgreSQL and Redis, then two pytest runs.

    python -m tests.suite [--workers=N] [PYTEST_ARGS...]
    make test [TEST_WORKERS=N] [PYTEST_ARGS="-x -k chat"]

Environment: AIRWAVE_TEST_PG_URL / AIRWAVE_TEST_REDIS_URL use those servers instead
of private ones (every test has its own schema and key prefix there);
AIRWAVE_TEST_PG_BIN (a PostgreSQL bin directory) and AIRWAVE_TEST_REDIS_SERVER (a
redis-server path) choose the binaries of the private ones.

1. ``pytest -n N -m "not serial"``: most of the suite, in N xdist workers.
2. ``pytest -m serial``: browsers, coturn, FFmpeg, clusters, shaped links, one at a
   time (they flake when the CPU is contended; tests/conftest.py marks them).

Both run, and both must pass. A run that collects nothing (pytest's exit 5) fails,
unless PYTEST_ARGS narrowed the selection and the other run found tests.

The services are started here once (tests/services.py) and given to both runs as
AIRWAVE_TEST_PG_URL / AIRWAVE_TEST_REDIS_URL; a URL already set in the environment
is used instead. Each pytest runs in its own process group: Ctrl-C, SIGTERM or
SIGHUP here is passed on to it as one SIGINT (pytest stops and reports), whatever
it leaves running in its group is killed, and the services are stopped and removed.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from types import FrameType

from tests.services import PrivateServices, ServicesUnavailable

NO_TESTS_COLLECTED = 5
INTERRUPT_GRACE = 60.0


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _say(message: str) -> None:
    print(f"suite: {message}", file=sys.stderr, flush=True)


def run_pytest(args: list[str]) -> int:
    """pytest in its own process group; on an interrupt, SIGINT to that group first.
    It gets SIGINT too if this process is killed outright (parent-death signal)."""
    command = [sys.executable, "-m", "pytest", *args]
    _say(shlex.join(command))
    process = subprocess.Popen(["setpriv", "--pdeathsig=INT", "--", *command], process_group=0)
    try:
        return process.wait()
    except Interrupted:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=INTERRUPT_GRACE)
        except subprocess.TimeoutExpired:
            pass
        raise
    finally:
        try:  # servers, browsers or workers a test left behind in the group
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def run_phases(workers: int, pytest_args: list[str]) -> int:
    phases = [
        ("parallel", ["-n", str(workers), "-m", "not serial", *pytest_args]),
        ("serial", ["-m", "serial", *pytest_args]),
    ]
    results: list[tuple[str, int, float]] = []
    for name, args in phases:
        began = time.monotonic()
        results.append((name, run_pytest(args), time.monotonic() - began))
    for name, code, seconds in results:
        _say(f"{name} run: pytest exit {code} in {seconds:.0f} s")
    codes = [code for _, code, _ in results]
    if pytest_args and 0 in codes:  # a narrowed selection may leave one run empty
        codes = [0 if code == NO_TESTS_COLLECTED else code for code in codes]
    return next((code for code in codes if code != 0), 0)


def main(argv: list[str]) -> int:
    workers = 2
    if argv and argv[0].startswith("--workers="):
        workers = int(argv.pop(0).split("=", 1)[1])
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    began = time.monotonic()
    services = PrivateServices(
        want_postgres=not os.environ.get("AIRWAVE_TEST_PG_URL"),
        want_redis=not os.environ.get("AIRWAVE_TEST_REDIS_URL"),
    )
    try:
        services.start()
        if services.pg_url:
            os.environ["AIRWAVE_TEST_PG_URL"] = services.pg_url
        if services.redis_url:
            os.environ["AIRWAVE_TEST_REDIS_URL"] = services.redis_url
        _say(
            f"PostgreSQL {os.environ['AIRWAVE_TEST_PG_URL']}, "
            f"Redis {os.environ['AIRWAVE_TEST_REDIS_URL']}"
            + (" (private)" if services.directory else " (given)")
        )
        code = run_phases(workers, argv)
    except ServicesUnavailable as exc:
        print(f"make test: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        _say(f"stopped by {exc}")
        return 128 + exc.signum
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # the clean-up is not cut short
        services.stop()
    _say(f"{'passed' if code == 0 else f'failed (exit {code})'} in {time.monotonic() - began:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
