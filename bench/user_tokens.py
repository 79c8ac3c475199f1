"""Tokens for scripts that need many users (bench.signaling, bench.calls,
bench.gifts). In order of preference:

1. ``--tokens-file``: one token per line (mint them with ``airwave token``,
   see docs/benchmarks.md); used in turn, so N lines are N users.
2. The server's development sign-in ``POST /api/v1/dev/token {name}``, when it
   exists (development mode only: ``airwave serve --dev``).
3. Otherwise: an error saying so (a single ``--token`` is one user).
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from pathlib import Path

import aiohttp


@dataclass(frozen=True)
class UserToken:
    token: str
    user_id: str


def token_subject(token: str) -> str:
    """The ``sub`` claim of a JWT, read without verifying (the server verifies)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return str(json.loads(base64.urlsafe_b64decode(payload))["sub"])
    except (IndexError, ValueError, KeyError):
        return ""


class TokensUnavailable(Exception):
    pass


def read_tokens_file(path: str) -> list[UserToken]:
    tokens = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    return [UserToken(t, token_subject(t)) for t in tokens]


async def dev_tokens(http: aiohttp.ClientSession, url: str, count: int, prefix: str) -> list[UserToken]:
    """``count`` new demo users from the development sign-in route."""
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> UserToken:
        async with gate:
            async with http.post(f"{url}/api/v1/dev/token", json={"name": f"{prefix}{i}"}) as r:
                if r.status == 404:
                    raise TokensUnavailable(
                        "the server has no POST /api/v1/dev/token (production mode): "
                        "pass --tokens-file with one token per user (see docs/benchmarks.md)"
                    )
                if r.status != 200:
                    raise TokensUnavailable(f"POST /api/v1/dev/token: HTTP {r.status}")
                data = await r.json()
                return UserToken(data["token"], data["userId"])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def user_tokens(
    http: aiohttp.ClientSession, url: str, count: int, *, tokens_file: str | None, prefix: str
) -> list[UserToken]:
    """``count`` user tokens: from the file (cycled when shorter; fewer distinct
    users then) or from the dev sign-in."""
    if tokens_file:
        tokens = read_tokens_file(tokens_file)
        if not tokens:
            raise TokensUnavailable(f"{tokens_file} holds no token")
        return [tokens[i % len(tokens)] for i in range(count)]
    return await dev_tokens(http, url, count, prefix)
