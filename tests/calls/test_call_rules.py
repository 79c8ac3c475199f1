"""The call rules on their own: a CallService over the real database, the
in-process bus and locks, a fake clock and timers that fire when the clock
passes them. No sockets, no media; the socket tests cover the protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from auth import Identity
from calls.calls import CALLS_CHANNEL, Call, CallError, CallService
from config import Settings
from events.bus import InProcessBus
from events.timers import TimerEvent, TimerHandler
from rooms.social import SocialGraph
from store import Database, migrate

START = 1_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class ClockTimers:
    """A TimerService that fires what is due when the test moves the clock."""

    clock: FakeClock
    pending: dict[str, tuple[float, TimerEvent]] = field(default_factory=dict)
    handler: TimerHandler | None = None

    def on_fire(self, handler: TimerHandler) -> None:
        self.handler = handler

    async def schedule(self, key: str, at_epoch: float, event: TimerEvent) -> None:
        self.pending[key] = (at_epoch, event)

    async def cancel(self, *keys: str) -> bool:
        return any([self.pending.pop(key, None) is not None for key in keys])

    async def close(self) -> None:
        self.pending.clear()

    def due_at(self, key: str) -> float | None:
        entry = self.pending.get(key)
        return entry[0] if entry else None

    async def advance(self, seconds: float) -> None:
        """Move the clock and fire every timer that is due, earliest first."""
        self.clock.now += seconds
        assert self.handler is not None
        while True:
            due = sorted((at, key) for key, (at, _) in self.pending.items() if at <= self.clock.now)
            if not due:
                return
            _, key = due[0]
            _, event = self.pending.pop(key)
            await self.handler(event)


@dataclass
class Rules:
    calls: CallService
    clock: FakeClock
    timers: ClockTimers
    events: list[dict[str, Any]]

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.events]


@pytest.fixture
async def make_rules(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Database] = []

    async def build(**env: Any) -> Rules:
        settings = make_settings(**env)
        db = await Database.connect(settings)
        opened.append(db)
        await migrate(db)
        social = SocialGraph(db)
        for user in ("ann", "bob", "cat"):
            await social.seen(Identity(user, user.title()))
        bus = InProcessBus()
        events: list[dict[str, Any]] = []

        async def record(event: dict[str, Any]) -> None:
            events.append(event)

        bus.subscribe(CALLS_CHANNEL, record)
        clock = FakeClock()
        timers = ClockTimers(clock)
        calls = CallService(db, bus, social, settings, timers, clock=clock)
        return Rules(calls, clock, timers, events)

    yield build
    for db in opened:
        await db.close()


async def _active_call(rules: Rules) -> Call:
    call = await rules.calls.initiate("ann", "bob", "audio")
    return await rules.calls.answer(call.id, "bob")


async def test_an_unanswered_call_is_missed_when_the_ring_timeout_passes(make_rules: Any) -> None:
    rules: Rules = await make_rules(ring_timeout=30)
    call = await rules.calls.initiate("ann", "bob", "audio")
    assert call.status == "ringing" and rules.calls.rings_until(call) == START + 30

    await rules.timers.advance(29.9)
    assert (await rules.calls.get(call.id)).status == "ringing"  # type: ignore[union-attr]

    await rules.timers.advance(0.1)
    ended = await rules.calls.get(call.id)
    assert ended is not None and ended.status == "ended" and ended.end_reason == "missed"
    assert rules.kinds() == ["call_ringing", "call_ended"]
    assert rules.events[-1]["reason"] == "missed" and rules.events[-1]["duration"] == 0
    with pytest.raises(CallError) as refused:
        await rules.calls.answer(call.id, "bob")
    assert refused.value.code == "call_ended"


async def test_answering_cancels_the_ring_timeout_and_sets_the_deadline(make_rules: Any) -> None:
    rules: Rules = await make_rules(ring_timeout=30, call_duration=180, call_warning_before=30)
    call = await rules.calls.initiate("ann", "bob", "video")
    await rules.timers.advance(10)
    answered = await rules.calls.answer(call.id, "bob")
    assert answered.status == "active" and answered.ends_at == START + 10 + 180
    assert rules.timers.due_at(f"call:{call.id}:ring") is None
    await rules.timers.advance(60)  # well past the ring timeout
    assert (await rules.calls.get(call.id)).status == "active"  # type: ignore[union-attr]


async def test_the_warning_comes_before_the_end_then_the_call_times_out(make_rules: Any) -> None:
    rules: Rules = await make_rules(call_duration=180, call_warning_before=30)
    call = await _active_call(rules)

    await rules.timers.advance(149)
    assert "call_warning" not in rules.kinds()
    await rules.timers.advance(1)
    warning = rules.events[-1]
    assert warning["type"] == "call_warning" and warning["remaining"] == 30 and warning["endsAt"] == START + 180

    await rules.timers.advance(30)
    ended = await rules.calls.get(call.id)
    assert ended is not None and ended.end_reason == "timeout"
    assert ended.ended_at == START + 180 and ended.duration == 180


async def test_an_extension_can_be_asked_only_in_the_warning_window(make_rules: Any) -> None:
    rules: Rules = await make_rules(call_duration=180, call_warning_before=30, call_extension=120)
    call = await _active_call(rules)

    await rules.timers.advance(100)
    with pytest.raises(CallError) as early:
        await rules.calls.request_extension(call.id, "ann")
    assert early.value.code == "extension_not_open"

    await rules.timers.advance(55)  # 25 s left: the window is open
    asked, extended = await rules.calls.request_extension(call.id, "ann")
    assert not extended and rules.kinds()[-1] == "call_extend_requested"
    asked, extended = await rules.calls.request_extension(call.id, "bob")
    assert extended and asked.ends_at == START + 300 and asked.extensions == 1
    assert rules.events[-1]["type"] == "call_extended" and rules.events[-1]["endsAt"] == START + 300

    await rules.timers.advance(30)  # past the old end: the old timeout does nothing
    assert (await rules.calls.get(call.id)).status == "active"  # type: ignore[union-attr]
    await rules.timers.advance(120)
    ended = await rules.calls.get(call.id)
    assert ended is not None and ended.end_reason == "timeout" and ended.duration == 300


async def test_extensions_stop_at_the_limit(make_rules: Any) -> None:
    rules: Rules = await make_rules(
        call_duration=60, call_warning_before=30, call_extension=60, call_max_extensions=1
    )
    call = await _active_call(rules)
    await rules.timers.advance(40)
    await rules.calls.request_extension(call.id, "ann")
    _, extended = await rules.calls.request_extension(call.id, "bob")
    assert extended
    await rules.timers.advance(50)  # 30 s left of the extended call
    with pytest.raises(CallError) as refused:
        await rules.calls.request_extension(call.id, "ann")
    assert refused.value.code == "extension_limit"


async def test_a_party_that_comes_back_within_the_grace_keeps_the_call(make_rules: Any) -> None:
    rules: Rules = await make_rules(reconnect_grace=15, call_duration=0)
    call = await _active_call(rules)
    await rules.calls.party_away(call.id, "ann")
    await rules.timers.advance(14)
    await rules.calls.party_back(call.id, "ann")
    await rules.timers.advance(60)
    assert (await rules.calls.get(call.id)).status == "active"  # type: ignore[union-attr]


async def test_a_party_away_past_the_grace_ends_the_call_as_disconnected(make_rules: Any) -> None:
    rules: Rules = await make_rules(reconnect_grace=15, call_duration=0)
    call = await _active_call(rules)
    await rules.timers.advance(5)
    await rules.calls.party_away(call.id, "bob")
    await rules.timers.advance(15)
    ended = await rules.calls.get(call.id)
    assert ended is not None and ended.end_reason == "disconnected" and ended.duration == 20
    # the call's locks went with it: both parties can call again
    again = await rules.calls.initiate("bob", "ann", "audio")
    assert again.status == "ringing"


async def test_a_busy_callee_ends_a_new_call_at_once(make_rules: Any) -> None:
    rules: Rules = await make_rules()
    await _active_call(rules)
    busy = await rules.calls.initiate("cat", "bob", "audio")
    assert busy.status == "ended" and busy.end_reason == "busy"
    assert rules.timers.due_at(f"call:{busy.id}:ring") is None
