"""Socket.IO connect needs a valid token; refusals carry a readable reason."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import pytest
import socketio

from tests.conftest import RunningApp


async def _connect(url: str, auth: object) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)
    return client


async def _refusal(url: str, auth: object) -> dict:
    client = socketio.AsyncClient(reconnection=False)
    errors: list[object] = []
    client.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)
    await client.disconnect()
    assert errors, "the client got no connect_error"
    return errors[0]  # type: ignore[return-value]


async def _metric(url: str, name: str, **labels: str) -> float:
    """The value of the sample of ``name`` whose labels include ``labels``."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as r:
            for line in (await r.text()).splitlines():
                head, _, value = line.rpartition(" ")
                metric, _, label_text = head.partition("{")
                if metric == name and wanted <= set(label_text.rstrip("}").split(",")):
                    return float(value)
    return 0.0


async def test_good_token_connects_and_polling_works_too(running: RunningApp) -> None:
    client = await _connect(running.url, {"token": running.token("alice")})
    assert client.connected
    assert await _metric(running.url, "airwave_socketio_connections") == 1.0
    await client.disconnect()
    polling = socketio.AsyncClient(reconnection=False)
    await polling.connect(running.url, auth={"token": running.token("bob")}, transports=["polling"], wait_timeout=5)
    assert polling.connected
    # The python client's polling disconnect waits out its own long-poll (25 s); abort it.
    await polling.eio.disconnect(abort=True)


async def test_missing_token_is_refused_with_a_reason(running: RunningApp) -> None:
    for auth in (None, {}, {"token": ""}):
        err = await _refusal(running.url, auth)
        assert err["data"]["code"] == "missing_token"
    assert await _metric(running.url, "airwave_socketio_connects_total", result="missing_token") >= 3


async def test_bad_and_expired_tokens_are_refused(running: RunningApp) -> None:
    err = await _refusal(running.url, {"token": "not-a-jwt"})
    assert err["data"]["code"] == "invalid_token"
    now = int(time.time())
    expired = jwt.encode(
        {"sub": "a", "iat": now - 100, "exp": now - 60}, running.settings.jwt_secret, "HS256"
    )
    err = await _refusal(running.url, {"token": expired})
    assert err["data"]["code"] == "token_expired" and "expired" in err["message"]


async def test_shutdown_disconnects_sockets_at_once(settings) -> None:
    from tests.conftest import start_app

    app = await start_app(settings)
    client = await _connect(app.url, {"token": app.token("dora")})
    gone = asyncio.Event()
    client.on("disconnect", lambda *args: gone.set())
    await app.server.close()
    # The server says goodbye: no waiting out the 25 s ping interval.
    await asyncio.wait_for(gone.wait(), 10)
    await client.disconnect()


def test_socketio_json_refuses_nan_and_infinity_both_ways() -> None:
    """StrictJson (one encoder per separators, one decoder, made once) writes what
    json.dumps writes and refuses NaN/Infinity in and out."""
    from signaling.server import StrictJson

    value = ["chat:message", {"text": "é", "n": [1, 2.5, None, True]}]
    compact = (",", ":")
    assert StrictJson.dumps(value, separators=compact) == __import__("json").dumps(value, separators=compact)
    assert StrictJson.loads(StrictJson.dumps(value)) == value
    assert StrictJson.loads(b'{"a": 1}') == {"a": 1}
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            StrictJson.dumps({"x": bad}, separators=compact)
    for text in ('{"x": NaN}', '[Infinity]', '[-Infinity]', b'[NaN]'):
        with pytest.raises(ValueError):
            StrictJson.loads(text)
