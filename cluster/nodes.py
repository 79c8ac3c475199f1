"""Node identity, heartbeats and HTTP between nodes.

Each node writes a heartbeat every few seconds: with Redis, a key
``{prefix}:node:<id>`` (:func:`events.bus.node_key`) holding the node's
description that expires when the node stops beating (so a node killed with
SIGKILL disappears on its own); without Redis, only this node exists.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import redis.asyncio as aioredis

from auth import Grants, TokenService
from config import Settings
from events.bus import node_key

log = logging.getLogger("airwave.nodes")

HEARTBEAT_SECONDS = 2.0
NODE_TTL_SECONDS = 6
NODE_TOKEN_TTL = 60.0
NODE_SUBJECT = "node:"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)

Describe = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class NodeAddress:
    node: str
    url: str


def node_id_for(settings_node_id: str, port: int) -> str:
    return settings_node_id or f"{socket.gethostname()}:{port}:{os.getpid()}"


def internal_url(settings: Settings) -> str:
    """How other nodes reach this node's HTTP."""
    if settings.internal_url:
        return settings.internal_url.rstrip("/")
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def node_subject(node_id: str) -> str:
    """The token subject (and media session owner) of a node."""
    return NODE_SUBJECT + node_id


def is_node_subject(subject: str) -> bool:
    """A node (e.g. an edge pulling a room), not a user."""
    return subject.startswith(NODE_SUBJECT)


class NodeRegistry(Protocol):
    """Which nodes are alive, and their load."""

    async def run(self, describe: Describe) -> None:
        """Beat until cancelled (returns at once when there is nothing to beat for)."""
        ...

    async def leave(self) -> None:
        """This node stops: forget it now rather than when its heartbeat expires."""
        ...

    async def live(self, describe: Describe) -> list[dict[str, Any]]:
        """Every live node's last description (this node's from ``describe``)."""
        ...


class LocalNodeRegistry:
    """One node: only this one exists."""

    async def run(self, describe: Describe) -> None:
        return None

    async def leave(self) -> None:
        return None

    async def live(self, describe: Describe) -> list[dict[str, Any]]:
        return [describe()]


class RedisNodeRegistry:
    """Heartbeats in Redis that expire with a node that stopped beating."""

    def __init__(self, redis: aioredis.Redis, prefix: str, node_id: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.key = node_key(prefix, node_id)

    async def run(self, describe: Describe) -> None:
        while True:
            try:
                await self.redis.set(self.key, json.dumps(describe()), ex=NODE_TTL_SECONDS)
            except Exception as exc:  # Redis down: keep beating, readiness reports it
                log.warning("node heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def leave(self) -> None:
        try:
            await self.redis.delete(self.key)
        except Exception:  # Redis may be gone at shutdown
            pass

    async def live(self, describe: Describe) -> list[dict[str, Any]]:
        nodes = []
        async for key in self.redis.scan_iter(match=node_key(self.prefix, "*"), count=100):
            raw = await self.redis.get(key)
            if raw:
                nodes.append(json.loads(raw))
        return sorted(nodes, key=lambda n: n["id"])


class NodeClient:
    """HTTP to other nodes with a node token minted here."""

    def __init__(self, tokens: TokenService, node_id: str) -> None:
        self.tokens = tokens
        self.node_id = node_id
        self._http: aiohttp.ClientSession | None = None

    def token(self) -> str:
        return self.tokens.mint(node_subject(self.node_id), grants=Grants(admin=True), ttl=NODE_TOKEN_TTL)

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        return self._http

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token()}"}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


__all__ = [
    "LocalNodeRegistry",
    "NodeAddress",
    "NodeClient",
    "NodeRegistry",
    "RedisNodeRegistry",
    "internal_url",
    "is_node_subject",
    "node_id_for",
    "node_subject",
]
