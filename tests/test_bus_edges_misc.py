"""Edge cases: the thread handle's bus, a raising filter, and other corners a user
would reach for."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, Event, Supervisor, child


def test_the_start_in_thread_handle_has_a_bus() -> None:
    """The `start_in_thread` handle has a thread-safe `bus` (DESIGN, "Entry points and
    the system handle"): `publish`, `publish_nowait`, `subscribe` (active when it
    returns), `unsubscribe`, `history`, `clear_history` and `stats`, from sync code."""
    with runtime.start_in_thread(Supervisor("app", children=[])) as system:
        assert system.publish("t", 1) == 0
        bus = system.bus
        assert bus.stats()["published"] == 1
        assert [e.payload for e in bus.history("t")] == [1]
        got: list[Any] = []
        bus.subscribe("t", "u.>")(got.append)  # active when it returns
        assert bus.publish("u.x", 2) == 1
        assert bus.publish_nowait("t", 3) == 1
        deadline = time.monotonic() + 30  # real time: the callback runs on the loop
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [event.payload for event in got] == [2, 3]
        bus.unsubscribe(got.append)
        assert bus.publish("t", 4) == 0
        bus.clear_history()
        assert bus.history() == []


class Full(Actor):
    subscriptions = ("t",)

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate
        self.seen: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        if msg == "seen":
            return list(self.seen)
        await self.gate.wait()
        self.seen.append(msg.payload if isinstance(msg, Event) else msg)
        return None


class Filtered(Actor):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def on_start(self) -> None:
        self.ctx.subscribe("t", filter=lambda e: 1 / e.payload > 0)

    async def receive(self, msg: Any) -> Any:
        if msg == "seen":
            return list(self.seen)
        self.seen.append(msg.payload)
        return None


async def test_an_event_whose_filter_raised_is_dead_lettered_not_just_skipped(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """DESIGN: "Delivery: ... never silently: every message is either handled or
    recorded in dead letters with a reason."  An event whose filter raises (here: 1/0)
    is not delivered to that subscriber; it is dead-lettered and counted in
    ``stats()["dropped"]``, as a raising callback's event is (it was once only logged)."""
    caplog.set_level(logging.CRITICAL)
    tree = Supervisor("app", children=[child(Filtered, name="f")])
    async with runtime.open_system(tree) as system:
        await trio.testing.wait_all_tasks_blocked()
        assert await system.bus.publish("t", 1) == 1
        assert await system.bus.publish("t", 0) == 0  # the filter raised ZeroDivisionError
        await trio.testing.wait_all_tasks_blocked()
        assert await system.ref("/app/f").ask("seen") == [1]
        assert system.dead_letters.total == 1
        assert system.bus.stats()["dropped"] == 1
