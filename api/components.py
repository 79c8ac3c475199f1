"""Everything one airwave process runs, wired once by the app factory."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from aiohttp import web

from api.engine_events import EngineObservers
from auth import TokenService
from cluster import Cluster
from config import Settings
from events.bus import EventBus
from rooms.rate_limit import RateLimits
from rooms.social import SocialGraph
from sfu import MediaEngine
from signaling import Signaling
from store import Database
from turn import IceServerProvider, StunServer

if TYPE_CHECKING:
    from api.recordings import RecordingService
    from api.route_limits import RouteLimiter
    from calls.calls import CallService
    from chat.chat import ChatService
    from chat.inbox import Inbox
    from events.timers import TimerService
    from gifts.gifts import GiftCatalog, GiftService
    from gifts.payouts import Payouts, Refunds
    from gifts.wallets import WalletLedger
    from presence.presence import PresenceService
    from rooms.rate_limit import InProcessTokenBucket
    from rooms.rooms import RoomRegistry
    from signaling.calls import CallSignaling
    from signaling.rooms import RoomSignals
    from webhooks.dispatcher import WebhookDispatcher
    from webhooks.outbox import Outbox

log = logging.getLogger("airwave")

T = TypeVar("T")


@dataclass(slots=True)
class Services:
    """What the features of api/app.py build, one typed slot each (None until the
    feature that provides it is installed; a misspelt name fails at once).
    Each feature's ``PROVIDES`` and ``NEEDS`` name these fields."""

    # webhook_events
    outbox: Outbox | None = None
    webhook_dispatcher: WebhookDispatcher | None = None
    admin_limiter: RouteLimiter | None = None
    # rooms
    rooms: RoomRegistry | None = None
    chat: ChatService | None = None
    presence: PresenceService | None = None
    room_signals: RoomSignals | None = None
    # inbox
    inbox: Inbox | None = None
    inbox_limiter: RouteLimiter | None = None
    # gifts
    wallets: WalletLedger | None = None
    gift_catalog: GiftCatalog | None = None
    gifts: GiftService | None = None
    # webhooks
    refunds: Refunds | None = None
    # payouts
    payouts: Payouts | None = None
    payout_limiter: RouteLimiter | None = None
    # calls
    calls: CallService | None = None
    call_timers: TimerService | None = None
    call_signaling: CallSignaling | None = None
    # rtmp
    rtmp_key_changes: InProcessTokenBucket | None = None
    # recordings
    recordings: RecordingService | None = None
    recording_changes: InProcessTokenBucket | None = None
    recording_reads: InProcessTokenBucket | None = None


def need(service: T | None) -> T:
    """A service an earlier feature installed (api/app.py checks the order)."""
    if service is None:
        raise RuntimeError("a feature's service was used before the feature that provides it was installed")
    return service


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
    engine_events: EngineObservers = field(init=False)  # the engine's observers, one list each
    cluster: Cluster = field(init=False)  # set by the app factory once node_id is known
    # Feature services, set by each feature's install(); see api/app.py FEATURES.
    services: Services = field(default_factory=Services)

    def __post_init__(self) -> None:
        self.engine_events = EngineObservers(self.media)

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
