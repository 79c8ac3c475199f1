"""bench/python_reference.py, the Node reference room on airwave's stack with nothing
of airwave's in it: bench.signaling drives it like airwave and the Node room (every
message to every socket), and it refuses a socket without a reference token."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import socketio

from tests.conftest import free_port

from .conftest import REPO, run_bench, stop_server


@pytest.fixture
def reference_room() -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.python_reference", "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        assert f":{port}" in line, line
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop_server(proc)


def test_bench_signaling_drives_the_python_reference_room(reference_room: tuple[str, int], tmp_path: Path) -> None:
    url, pid = reference_room
    out = tmp_path / "signaling.json"
    run_bench(
        # 200 connections: enough server CPU (at least 10 clock ticks) for a per-connection figure
        "signaling", "--url", url, "--steps", "200:6", "--senders", "3", "--duration", "2",
        "--idle", "0.5", "--drain", "3", "--workers", "2", "--server-pid", str(pid),
        "--max-load-cpu", "101", "--max-lag-ms", "100000", "--out", str(out),
    )
    step = json.loads(out.read_text())["steps"][0]
    assert step["connect_failures"] == 0 and step["messages_sent"] >= 8
    assert step["deliveries"] == step["messages_sent"] * step["sockets"]
    assert step["connect_server_cpu_ms"] is not None and step["connect_server_cpu_ms"] > 0


async def test_a_socket_without_a_reference_token_is_refused(reference_room: tuple[str, int]) -> None:
    url, _ = reference_room
    client = socketio.AsyncClient()
    refusals: list[object] = []
    client.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, auth={"token": "not-a-reference-token"}, transports=["websocket"],
                             wait_timeout=5)
    assert refusals == [{"message": "a token is required", "data": {"code": "unauthorized"}}]
    await client.connect(url, auth={"token": "ref.u1.name"}, transports=["websocket"], wait_timeout=5)
    try:
        reply = await client.call("stream:join", {"roomId": "missing"}, timeout=5)
        assert reply["error"]["code"] == "not_found"
    finally:
        await client.disconnect()
