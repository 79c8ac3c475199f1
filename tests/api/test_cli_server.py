"""The server as a user runs it: the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from api.workers import LISTEN_BACKLOG
from tests.conftest import free_port


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRWAVE_")}
    env.update(AIRWAVE_STUN_PORT="0", **extra)
    return env


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait_up(url: str, proc: subprocess.Popen, deadline: float = 20) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}: {proc.stderr.read()}")
        try:
            if _get(url + "/health/liveness")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not come up")


def test_serve_with_no_config_answers_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--host", "127.0.0.1"],
        cwd=tmp_path, env=_env(tmp_path), stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_up(url, proc)
        status, body = _get(url + "/health/readiness")
        assert status == 200 and json.loads(body)["checks"]["database"] == "ok"
        status, body = _get(url + "/metrics")
        assert status == 200 and b"process_cpu_seconds_total" in body and b"airwave_http_requests_total" in body
        # a listening socket's Send-Q is its accept backlog: a reconnect burst is queued,
        # not dropped (aiohttp's own default is 128)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                                   text=True, check=True).stdout.split()
        assert listening[0] == "LISTEN" and int(listening[2]) == LISTEN_BACKLOG >= 1024
        assert _post_json(url + "/api/v1/dev/token", {"name": "Eve"})[0] == 404  # no dev mode unasked
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first_lines = "\n".join(log.splitlines()[:8])
    assert "SQLite" in first_lines and "in-process" in first_lines
    assert "production mode" in first_lines
    # No secret set: one is generated and kept, readable by the owner only.
    assert (tmp_path / "data" / "jwt-secret").stat().st_mode & 0o777 == 0o600
    # and the database with its WAL files the same (issue 15.13)
    for name in ("airwave.db", "airwave.db-wal", "airwave.db-shm"):
        path = tmp_path / "data" / name
        assert not path.exists() or path.stat().st_mode & 0o777 == 0o600, name
    assert (tmp_path / "data" / "airwave.db").stat().st_mode & 0o777 == 0o600
    assert f"http://127.0.0.1:{port}/" in log
    # The embedded default keeps its data under ./data of the working directory.
    assert (tmp_path / "data" / "airwave.db").exists()


def _post_json(url: str, payload: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_dev_mode_only_on_request_and_said_loudly(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--dev", "--port", str(port), "--host", "127.0.0.1"],
        cwd=tmp_path, env=_env(tmp_path), stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_up(url, proc)
        status, body = _post_json(url + "/api/v1/dev/token", {"name": "Ada"})
        assert status == 200 and body["token"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "DEVELOPMENT mode" in "\n".join(log.splitlines()[:3])


def test_sigint_also_exits_0(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--host", "127.0.0.1"],
        cwd=tmp_path, env=_env(tmp_path, AIRWAVE_LOG_FORMAT="json"), stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_up(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any(line["msg"].startswith("listening on") for line in lines)
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)


def test_bad_configuration_exits_2_naming_the_setting(tmp_path: Path) -> None:
    for extra, name in (
        ({"AIRWAVE_PORT": "abc"}, "AIRWAVE_PORT"),
        ({"AIRWAVE_DATABASE_URL": "mongodb://x"}, "AIRWAVE_DATABASE_URL"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "api.cli", "serve"],
            cwd=tmp_path, env=_env(tmp_path, **extra), capture_output=True, text=True, timeout=30,
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0]


def test_config_file_sets_the_port(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "airwave.toml"
    conf.write_text(f'host = "127.0.0.1"\nport = {port}\nstun_port = 0\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--config", str(conf)],
        cwd=tmp_path, env=_env(tmp_path), stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_up(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_a_request_path_cannot_forge_a_log_line(tmp_path: Path) -> None:
    """Issue 15.12: GET /x%0AFAKE-LOG-LINE is one line in the text log, escaped."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--host", "127.0.0.1"],
        cwd=tmp_path, env=_env(tmp_path), stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_up(url, proc)
        assert _get(url + "/x%0AFAKE-LOG-LINE%1B%5B31m")[0] == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(line.startswith("FAKE-LOG-LINE") for line in log.splitlines())
    (line,) = [line for line in log.splitlines() if "FAKE-LOG-LINE" in line]
    assert "GET /x\\nFAKE-LOG-LINE\\x1b[31m 404" in line


def test_start_up_objects_leave_the_collectors_generations() -> None:
    """After start-up the server freezes what it built and collects young objects less
    often (full collections walked every long-lived object, loop stopped, for 150 ms at
    1,500 sockets)."""
    probe = (
        "import gc, json; from api.cli import _tune_collector, YOUNG_COLLECTION_THRESHOLD as Y; "
        "import api.app; before = gc.get_freeze_count(); _tune_collector(); "
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()[0], Y]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    before, frozen, young, expected = json.loads(out.stdout)
    assert before == 0
    assert frozen > 10_000  # the modules' objects at least
    assert young == expected > 700
