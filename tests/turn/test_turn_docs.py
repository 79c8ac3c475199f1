"""docs/turn.md's turnserver.conf is one coturn understands, and its settings exist."""

from __future__ import annotations

import re
from pathlib import Path

from config import documented_settings
from tests.turn.turn_testing import CoturnProcess, stun_binding_answered

DOC = Path(__file__).resolve().parents[2] / "docs" / "turn.md"

# Lines the test harness sets itself (loopback addresses, ports, files) or that
# need a real certificate.
HARNESS_OWNED = (
    "listening-ip",
    "relay-ip",
    "external-ip",
    "listening-port",
    "tls-listening-port",
    "min-port",
    "max-port",
    "static-auth-secret",
    "realm",
    "cert",
    "pkey",
    "log-file",
    "pidfile",
    "simple-log",
    "denied-peer-ip=127.",  # the harness talks to it over loopback
)


def doc_config() -> list[str]:
    text = DOC.read_text()
    (block,) = re.findall(r"```ini\n(.*?)```", text, flags=re.S)
    lines = [line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_doc_config_is_understood_by_coturn() -> None:
    lines = doc_config()
    assert "use-auth-secret" in lines and "no-multicast-peers" in lines
    kept = tuple(line for line in lines if not line.startswith(HARNESS_OWNED))
    with CoturnProcess(extra_config=kept) as turn:
        assert stun_binding_answered(turn.host, turn.port)
        log = turn.log()
    assert "Bad configuration format" not in log, log
    assert "CONFIG ERROR" not in log, log


def test_doc_names_real_settings() -> None:
    known = {name for name, _, _ in documented_settings()}
    named = set(re.findall(r"AIRWAVE_[A-Z_]+", DOC.read_text()))
    assert named <= known, named - known
