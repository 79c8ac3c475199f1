"""Ending a WHIP or WHEP session: DELETE its Location."""

from __future__ import annotations

import asyncio

import aiohttp


async def delete_session(http: aiohttp.ClientSession | None, location: str | None, token: str | None) -> None:
    """DELETE the session URL, best effort: a server that is gone or slow does
    not stop a bench run from cleaning up the rest."""
    if http is None or not location:
        return
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with asyncio.timeout(5):
            async with http.delete(location, headers=headers) as response:
                await response.read()
    except (aiohttp.ClientError, TimeoutError):
        pass
