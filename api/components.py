"""Everything one airwave process runs, wired once by the app factory."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from auth import TokenService
from cluster import Cluster
from config import Settings
from rooms.bus import EventBus
from rooms.rate_limit import RateLimits
from rooms.social import SocialGraph
from sfu import MediaEngine
from signaling import Signaling
from store import Database
from turn import IceServerProvider, StunServer

log = logging.getLogger("airwave")


@dataclass
class Airwave:
    settings: Settings
    tokens: TokenService
    db: Database
    bus: EventBus
    signaling: Signaling
    media: MediaEngine
    ice: IceServerProvider
    social: SocialGraph
    limits: RateLimits
    redis: aioredis.Redis | None = None
    stun: StunServer | None = None
    node_id: str = ""
    draining: bool = False  # set at SIGTERM: no new sessions, calls on this node end
    openapi: dict[str, Any] = field(default_factory=dict)
    migrated: asyncio.Event = field(default_factory=asyncio.Event)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    cluster: Cluster = field(init=False)  # set by the app factory once node_id is known
    # Feature services, set by each feature's install(); see api/app.py FEATURES.
    services: dict[str, Any] = field(default_factory=dict)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """A background task that is cancelled and awaited at shutdown."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def cancel_background(self) -> None:
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


AIRWAVE: web.AppKey[Airwave] = web.AppKey("airwave", Airwave)
