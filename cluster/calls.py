"""Call media across nodes.

A call's media is one SFU room, ``call/{callId}``: the ``/`` is what makes it
a call's room (no WHIP/WHEP URL or ``sfu:*`` roomId may hold one, so only the
call's parties reach it). It lives on the call's media node (the directory's
:meth:`~cluster.directory.MediaDirectory.call_media_node`). The other party's
``call:sdp_offer``, ``call:sdp_answer`` and ``call:ice_candidate`` are
forwarded by its own node to that node (``POST /internal/v1/calls/{callId}/media``,
node tokens only), so each party's media goes straight to the media node; the
media node's offers reach the party's sockets on any node through Socket.IO's
Redis manager.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp

from cluster.directory import MediaDirectory
from cluster.nodes import NodeClient

INTERNAL_CALL_MEDIA = "/internal/v1/calls/{call_id}/media"


def call_room(call_id: str) -> str:
    """The SFU room of a call's media."""
    return f"call/{call_id}"


def call_of_room(room: str) -> str | None:
    """The call id of a call's SFU room, None for other rooms."""
    kind, _, call_id = room.partition("/")
    return call_id if kind == "call" and call_id and "/" not in call_id else None


def is_call_room(room: str) -> bool:
    return "/" in room


class LocalCallMedia(Protocol):
    """What the media node needs from the socket face: a party's media
    request served here, as if the party's socket had sent it."""

    async def local_media_request(self, call_id: str, user_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """The ack, or ``{"error": {code, message}}``."""
        ...


class CallMediaRouter:
    """Routes a call party's media requests to the call's media node."""

    def __init__(self, directory: MediaDirectory, client: NodeClient) -> None:
        self.directory = directory
        self.client = client
        self._local: LocalCallMedia | None = None

    def serve_with(self, local: LocalCallMedia) -> None:
        """The socket face that serves requests forwarded to this node."""
        self._local = local

    async def serve(self, call_id: str, user_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """A request another node forwarded here."""
        if self._local is None:
            return {"error": {"code": "unavailable", "message": "this node does not serve calls"}}
        return await self._local.local_media_request(call_id, user_id, request)

    async def media_node(self, call_id: str) -> str | None:
        """None when this node holds the call's media, else the node's URL."""
        address = await self.directory.call_media_node(call_id)
        return None if address.node == self.directory.me.node else address.url

    async def forward(self, url: str, call_id: str, user_id: str, request: dict[str, Any]) -> dict[str, Any]:
        body = {"userId": user_id, **request}
        try:
            async with self.client.http.post(
                url + INTERNAL_CALL_MEDIA.format(call_id=call_id), json=body, headers=self.client.headers()
            ) as r:
                reply = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return {"error": {"code": "media_node_unreachable", "message": f"the call's media node: {exc}"}}
        return reply if isinstance(reply, dict) else {"error": {"code": "bad_reply", "message": "media node"}}

    async def forget(self, call_id: str) -> None:
        await self.directory.forget_call(call_id)


__all__ = ["CallMediaRouter", "LocalCallMedia", "call_of_room", "call_room", "is_call_room"]
