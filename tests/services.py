"""The suite's own PostgreSQL and Redis: private, on free loopback ports, thrown away after.

``PrivateServices`` makes a PostgreSQL cluster with ``initdb`` in a new directory
under the temporary directory and starts ``postgres`` and ``redis-server`` on
127.0.0.1, each in its own session (a Ctrl-C at the terminal reaches pytest, not
them) and with a parent-death signal (they stop if the process that started them
dies without cleaning up). ``stop()`` stops both and removes the directory; a
directory left by a killed run is removed by the next start.

As root, both run as the unprivileged ``postgres`` user (``nobody`` when there is
none) through ``setpriv``, in a directory that user owns: PostgreSQL refuses to run
as root. ``ServicesUnavailable`` carries a one-paragraph message naming what to
install; callers print it instead of a traceback.

Binaries: the newest /usr/lib/postgresql/*/bin (or AIRWAVE_TEST_PG_BIN, a bin
directory) and ``redis-server`` on PATH (or AIRWAVE_TEST_REDIS_SERVER, a path).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DIR_PREFIX = "airwave-test-services-"
OWNER_FILE = "owner.pid"
START_TIMEOUT = 30.0
PORT_ATTEMPTS = 3
STOP_TIMEOUT = 10.0


class ServicesUnavailable(RuntimeError):
    """The private services cannot be started; the message says what to do."""


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_version(bin_dir: str) -> int:
    name = Path(bin_dir).parent.name  # /usr/lib/postgresql/<version>/bin
    return int(name) if name.isdigit() else 0


def postgres_bin_dir() -> Path:
    chosen = os.environ.get("AIRWAVE_TEST_PG_BIN")
    candidates = [chosen] if chosen else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=_postgres_version, reverse=True
    )
    for directory in candidates:
        if all(os.access(Path(directory, name), os.X_OK) for name in ("initdb", "postgres", "pg_isready")):
            return Path(directory)
    where = f"AIRWAVE_TEST_PG_BIN={chosen}" if chosen else "/usr/lib/postgresql/*/bin"
    raise ServicesUnavailable(
        f"The tests start their own PostgreSQL, but initdb, postgres and pg_isready were not "
        f"found in {where}. Install Debian's PostgreSQL server (as root: apt-get install "
        f"postgresql, which `make test` does when run as root), or point AIRWAVE_TEST_PG_BIN "
        f"at a PostgreSQL bin directory, or use a running server with "
        f"AIRWAVE_TEST_PG_URL=postgresql://user@host:port/db."
    )


def redis_server_binary() -> Path:
    chosen = os.environ.get("AIRWAVE_TEST_REDIS_SERVER")
    if chosen:
        found = chosen if os.access(chosen, os.X_OK) else None
    else:
        found = shutil.which("redis-server")
    if found:
        return Path(found)
    where = f"AIRWAVE_TEST_REDIS_SERVER={chosen}" if chosen else "PATH"
    raise ServicesUnavailable(
        f"The tests start their own Redis, but redis-server was not found in {where}. "
        f"Install Debian's Redis server (as root: apt-get install redis-server, which "
        f"`make test` does when run as root), or use a running server with "
        f"AIRWAVE_TEST_REDIS_URL=redis://host:port/0."
    )


def _unprivileged_user() -> pwd.struct_passwd | None:
    """Who the services run as: None for the current user, else a system user (as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServicesUnavailable(
        "The tests run PostgreSQL as an unprivileged user when started as root, but neither "
        "a `postgres` nor a `nobody` user exists. Install Debian's postgresql package (it "
        "creates `postgres`) or run the tests as an ordinary user."
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned_dirs(parent: Path) -> None:
    """Directories of earlier runs whose owner process is gone (killed with SIGKILL)."""
    for directory in parent.glob(DIR_PREFIX + "*"):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _pid_alive(owner):
            shutil.rmtree(directory, ignore_errors=True)


@dataclass
class PrivateServices:
    """A private PostgreSQL and/or Redis; ``start()`` starts all that are wanted or none."""

    want_postgres: bool = True
    want_redis: bool = True
    directory: Path | None = None
    pg_url: str = ""
    redis_url: str = ""
    _processes: list[tuple[subprocess.Popen[bytes], signal.Signals]] = field(default_factory=list)

    def start(self) -> PrivateServices:
        pg_bin = postgres_bin_dir() if self.want_postgres else None
        redis_bin = redis_server_binary() if self.want_redis else None
        user = _unprivileged_user()
        parent = Path("/tmp") if user else Path(tempfile.gettempdir())
        remove_abandoned_dirs(parent)
        self.directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent))
        (self.directory / OWNER_FILE).write_text(str(os.getpid()))
        if user:
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        try:
            if pg_bin:
                self.pg_url = self._start_postgres(pg_bin, user)
            if redis_bin:
                self.redis_url = self._start_redis(redis_bin, user)
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self, user: pwd.struct_passwd | None, death_signal: str, *args: str) -> list[str]:
        """``args`` as ``user`` (through setpriv), stopped by ``death_signal`` if we die."""
        switch = [
            f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
        ] if user else []
        return ["setpriv", *switch, f"--pdeathsig={death_signal}", "--", *args]

    def _spawn(
        self, command: list[str], log: Path, user: pwd.struct_passwd | None, stop: signal.Signals
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            if user:
                os.chown(log, user.pw_uid, user.pw_gid)
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.directory, start_new_session=True,
            )
        self._processes.append((process, stop))
        return process

    def _log_tail(self, log: Path) -> str:
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return "(no log)"

    def _start_postgres(self, bin_dir: Path, user: pwd.struct_passwd | None) -> str:
        assert self.directory
        data = self.directory / "pgdata"
        initdb = subprocess.run(
            self._command(user, "KILL", str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                          "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"),
            capture_output=True, text=True, cwd=self.directory, check=False,
        )
        if initdb.returncode != 0:
            raise ServicesUnavailable(
                f"initdb failed for the tests' private PostgreSQL in {data}: "
                f"{(initdb.stderr or initdb.stdout).strip()}"
            )

        def serve(port: int) -> list[str]:
            return self._command(
                user, "INT", str(bin_dir / "postgres"), "-D", str(data),
                "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
                "-c", f"unix_socket_directories={self.directory}",
                "-c", "max_connections=300", "-c", "fsync=off", "-c", "autovacuum=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            )

        def ready(port: int) -> bool:
            probe = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
            return subprocess.run(probe, check=False).returncode == 0

        port = self._start_on_free_port("PostgreSQL", serve, ready, user, signal.SIGINT)
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _start_redis(self, binary: Path, user: pwd.struct_passwd | None) -> str:
        assert self.directory
        directory = str(self.directory)

        def serve(port: int) -> list[str]:
            return self._command(
                user, "TERM", str(binary), "--bind", "127.0.0.1", "--port", str(port),
                "--dir", directory, "--save", "", "--appendonly", "no", "--daemonize", "no",
            )

        def ready(port: int) -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    return conn.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        port = self._start_on_free_port("Redis", serve, ready, user, signal.SIGTERM)
        return f"redis://127.0.0.1:{port}/0"

    def _start_on_free_port(
        self,
        name: str,
        serve: Callable[[int], list[str]],
        ready: Callable[[int], bool],
        user: pwd.struct_passwd | None,
        stop: signal.Signals,
    ) -> int:
        """Start ``serve(port)`` until it answers ``ready``; another port if it exits
        (a free port can be taken between our probe and its bind)."""
        assert self.directory
        log = self.directory / f"{name.lower()}.log"
        for _ in range(PORT_ATTEMPTS):
            port = free_loopback_port()
            process = self._spawn(serve(port), log, user, stop)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and process.poll() is None:
                if ready(port):
                    return port
                time.sleep(0.1)
            if process.poll() is None:  # running but not answering: another port will not help
                what = f"did not answer on 127.0.0.1:{port} within {START_TIMEOUT:.0f}s"
                break
            what = f"exited at start ({process.returncode}) {PORT_ATTEMPTS} times"
        raise ServicesUnavailable(
            f"The tests' private {name} {what}; its log ends:\n{self._log_tail(log)}"
        )

    def stop(self) -> None:
        """Stop both (PostgreSQL: fast shutdown) and remove the directory; safe to repeat."""
        for process, stop in self._processes:
            if process.poll() is None:
                try:
                    os.kill(process.pid, stop)
                except ProcessLookupError:
                    pass
        for process, _ in self._processes:
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            try:  # the whole session: postgres backends, whatever is left
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        self._processes.clear()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
