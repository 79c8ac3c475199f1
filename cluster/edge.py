"""Edges: a node whose viewer wants a room published on another node pulls
the room once from its origin over a server-to-server WHEP session
(``POST {origin}/whep/{room}`` with a node token it mints itself: admin grant,
60 s, ``sub = node:<id>``), publishes what arrives into its own copy of the
room (``MediaEngine.pull``: RTP as it is, no decoding) and subscribes its
viewers to that copy. The origin pays one subscriber per edge. An edge drops
its pull shortly after its last viewer leaves; when the origin's publisher
ends, the pull and the edge's viewers end with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from cluster.directory import MediaDirectory
from cluster.errors import OriginRefused, OriginUnreachable
from cluster.nodes import NodeAddress, NodeClient, node_subject
from sfu import MediaEngine, RoomNotLive, Session

log = logging.getLogger("airwave.edge")

EDGE_LINGER_SECONDS = 1.0  # a pull outlives its last viewer this long (a viewer may be arriving)
SDP = "application/sdp"

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


@dataclass
class EdgePull:
    room: str
    origin: NodeAddress
    session: Session | None = None
    resource: str = ""  # the origin's WHEP session URL
    linger: asyncio.TimerHandle | None = None


class EdgePuller:
    """Pulls rooms from their origins for this node's viewers."""

    def __init__(self, engine: MediaEngine, directory: MediaDirectory, client: NodeClient, spawn: Spawn) -> None:
        self.engine = engine
        self.directory = directory
        self.client = client
        self.spawn = spawn
        self.pulls: dict[str, EdgePull] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure_copy(self, room: str) -> None:
        """Before a WHEP viewer subscribes here: when the room's origin is
        another node, make sure this node pulls it (once). Raises
        :class:`cluster.errors.ClusterError` when the origin fails us."""
        if self.engine.has_publisher(room):
            pull = self.pulls.get(room)
            if pull is not None and pull.linger is not None:
                pull.linger.cancel()
                pull.linger = None
            return
        lock = self._locks.setdefault(room, asyncio.Lock())
        async with lock:
            if self.engine.has_publisher(room):
                return
            origin = await self.directory.origin_of(room)
            if origin is None or origin.node == self.directory.me.node:
                return  # not live anywhere: the engine answers 404
            await self._pull(room, origin)

    async def _pull(self, room: str, origin: NodeAddress) -> None:
        pull = EdgePull(room, origin)

        async def exchange(offer: str) -> str:
            url = f"{origin.url}/whep/{room}"
            try:
                async with self.client.http.post(url, data=offer.encode(), headers=self.client.headers(SDP)) as r:
                    body = await r.text()
                    if r.status == 404:
                        raise RoomNotLive(f"room {room!r} is not live on its origin")
                    if r.status != 201:
                        raise OriginRefused(f"the origin answered {r.status}")
                    location = r.headers.get("Location", "")
                    pull.resource = origin.url + urlsplit(location).path if location else ""
                    return body
            except aiohttp.ClientError as exc:
                raise OriginUnreachable(f"the room's origin is unreachable: {exc}") from None

        self.pulls[room] = pull
        try:
            pull.session = await self.engine.pull(room, exchange, owner=node_subject(origin.node))
        except BaseException:
            if self.pulls.get(room) is pull:
                del self.pulls[room]
            await self._delete_resource(pull)
            raise
        log.info("edge: pulling room %s from %s (session %s)", room, origin.node, pull.session.id)

    async def _delete_resource(self, pull: EdgePull) -> None:
        if not pull.resource:
            return
        resource, pull.resource = pull.resource, ""
        try:
            async with self.client.http.delete(resource, headers=self.client.headers()) as r:
                await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("edge: DELETE %s failed: %s", resource, exc)

    def session_closed(self, session: Session) -> None:
        """A local session ended: a pull's last viewer, or a pull itself."""
        pull = self.pulls.get(session.room)
        if pull is None:
            return
        if session is pull.session:
            del self.pulls[session.room]
            if pull.linger is not None:
                pull.linger.cancel()
            self.spawn(self._delete_resource(pull), f"edge-unpull-{session.room}")
            log.info("edge: pull of room %s ended (%s)", session.room, session.close_reason)
        elif session.role == "subscriber" and self.engine.subscriber_count(session.room) == 0:
            if pull.linger is None:
                loop = asyncio.get_running_loop()
                pull.linger = loop.call_later(EDGE_LINGER_SECONDS, self._linger_over, pull)

    def _linger_over(self, pull: EdgePull) -> None:
        pull.linger = None
        if self.pulls.get(pull.room) is pull and self.engine.subscriber_count(pull.room) == 0:
            if pull.session is not None:
                self.spawn(pull.session.close("no_viewers"), f"edge-close-{pull.room}")

    async def close(self) -> None:
        for pull in list(self.pulls.values()):
            await self._delete_resource(pull)


__all__ = ["EdgePull", "EdgePuller"]
