"""Test support for turn/: a throwaway coturn on 127.0.0.1 (temp config, free port,
killed at the end), free ports, loopback checks.

Usable without pytest::

    with CoturnProcess(secret="s3cret") as turn:
        ...  # turn.host, turn.port, turn.secret, turn.url ("turn:127.0.0.1:PORT")

The pytest fixture :func:`coturn` below wraps it (module scope). Other suites
can use it with ``from tests.turn.turn_testing import coturn  # noqa: F401`` in
their conftest.py or test module.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"
REALM = "airwave.test"


def free_port(host: str = HOST) -> int:
    """A port free for both UDP and TCP on ``host`` (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def stun_binding_answered(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether a STUN Binding request to host:port gets a success response."""
    tid = secrets.token_bytes(12)
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, tid)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request, (host, port))
        try:
            data, _ = sock.recvfrom(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == tid


class CoturnProcess:
    """``turnserver`` with ``use-auth-secret`` on loopback, UDP and TCP, no TLS."""

    def __init__(
        self,
        secret: str | None = None,
        *,
        extra_secrets: tuple[str, ...] = (),
        relay_ports: int = 40,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        self.host = HOST
        self.realm = REALM
        self.secret = secret or secrets.token_urlsafe(24)
        self.extra_secrets = extra_secrets
        self.port = 0
        self.min_port = 0
        self.max_port = 0
        self._relay_ports = relay_ports
        self._extra_config = extra_config
        self._dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"turn:{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "turnserver.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def config_text(self) -> str:
        assert self._dir is not None
        lines = [
            f"listening-ip={self.host}",
            f"relay-ip={self.host}",
            f"listening-port={self.port}",
            f"min-port={self.min_port}",
            f"max-port={self.max_port}",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            *(f"static-auth-secret={s}" for s in self.extra_secrets),
            f"realm={self.realm}",
            "allow-loopback-peers",
            "no-multicast-peers",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-rfc5780",
            "fingerprint",
            f"userdb={self._dir / 'turndb'}",
            f"log-file={self.log_path}",
            "simple-log",
            "no-stdout-log",
            f"pidfile={self._dir / 'turnserver.pid'}",
            *self._extra_config,
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> CoturnProcess:
        binary = shutil.which("turnserver")
        if binary is None:
            raise RuntimeError("turnserver not found: apt-get install coturn")
        self._dir = Path(tempfile.mkdtemp(prefix="airwave-coturn-"))
        self.port = free_port()
        base = random.randrange(20000, 30000 - self._relay_ports)
        self.min_port, self.max_port = base, base + self._relay_ports - 1
        config = self._dir / "turnserver.conf"
        config.write_text(self.config_text())
        self.process = subprocess.Popen(
            [binary, "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log()
                self.stop()
                raise RuntimeError(f"turnserver exited at start:\n{log}")
            if stun_binding_answered(self.host, self.port):
                return self
            time.sleep(0.05)
        log = self.log()
        self.stop()
        raise RuntimeError(f"turnserver did not answer within {timeout}s:\n{log}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            # Only our own child, by its pid (it leads its own session).
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._dir is not None and os.environ.get("AIRWAVE_KEEP_COTURN_LOG") is None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> CoturnProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_uclient(
    host: str,
    port: int,
    username: str,
    password: str,
    *,
    messages: int = 5,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """``turnutils_uclient`` allocating on host:port with the given long-term credentials.

    ``-y`` makes it its own peer (client to client through two relays), so no
    separate peer process is needed; ``-c`` leaves out the RTCP allocation.
    """
    binary = shutil.which("turnutils_uclient")
    if binary is None:
        raise RuntimeError("turnutils_uclient not found: apt-get install coturn")
    args = [binary, "-y", "-c", "-n", str(messages), "-l", "100"]
    args += ["-u", username, "-w", password, "-p", str(port), host]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def coturn() -> Iterator[CoturnProcess]:
    """A started coturn on 127.0.0.1 (``.host``, ``.port``, ``.secret``, ``.url``)."""
    with CoturnProcess() as server:
        yield server
