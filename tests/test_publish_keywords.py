"""The keywords of publish: ``timeout`` bounds the wait in full subscribers' lines (it is
never metadata), and every publish, ``system.bus``'s included, takes ``**metadata``.

Contract (DESIGN.md, Event bus): "`correlation_id`, `msg_id` and `timeout` are keywords
of `publish`, not metadata keys."  Past the timeout the event is dead-lettered
(``overflow``) for the subscribers it had not reached and the publish returns the
count delivered.  All on the autojump clock: no real sleeps.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import UNHANDLED, Actor, Event, Mailbox, Supervisor, child


class Stuck(Actor):
    """Subscribes ``a.>`` with room for one event; takes one in hand and keeps it
    until `gate` is set: after two events it is full, and stays full."""

    subscriptions = ("a.>",)
    mailbox = Mailbox(capacity=1)

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            await self.gate.wait()
            return None
        return UNHANDLED


class Roomy(Actor):
    """Subscribes ``a.>`` with plenty of room; keeps what it gets."""

    subscriptions = ("a.>",)

    def __init__(self) -> None:
        self.seen: list[Event] = []

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            self.seen.append(msg)
            return None
        if msg == "seen":
            return list(self.seen)
        return UNHANDLED


class Publisher(Actor):
    """Publishes what it is asked to with `ctx.publish` or `ctx.publish_nowait`;
    answers the count, or the `ValueError` the call raised."""

    async def receive(self, msg: Any) -> Any:
        match msg:
            case ("publish", topic, payload, keywords):
                try:
                    return await self.ctx.publish(topic, payload, **keywords)
                except ValueError as error:
                    return error
            case ("publish_nowait", topic, payload, keywords):
                try:
                    return self.ctx.publish_nowait(topic, payload, **keywords)
                except ValueError as error:
                    return error
        return UNHANDLED


@asynccontextmanager
async def open_app() -> AsyncIterator[tuple[runtime.System, trio.Event]]:
    """Run /app/stuck, /app/roomy and /app/pub; yield the system and `stuck`'s gate,
    which opens as the body ends (stuck lets go, and the system stops at once)."""
    gate = trio.Event()
    tree = Supervisor(
        "app",
        children=[
            child(Stuck, name="stuck", args=(gate,)),
            child(Roomy, name="roomy"),
            child(Publisher, name="pub"),
        ],
    )
    async with runtime.open_system(tree) as system:
        yield system, gate
        gate.set()


async def fill_stuck(system: runtime.System) -> None:
    """One event in `stuck`'s hand, one queued: its ``block`` mailbox is full."""
    await system.bus.publish("a.fill", 0)
    await trio.testing.wait_all_tasks_blocked()
    await system.bus.publish("a.fill", 1)


def overflows(system: runtime.System, payload: Any) -> list[tuple[str, str]]:
    return [
        (letter.recipient, letter.reason)
        for letter in system.dead_letters.recent(1000)
        if isinstance(letter.message, Event) and letter.message.payload == payload
    ]


async def roomy_metadata(system: runtime.System, payload: Any) -> list[Any]:
    await trio.testing.wait_all_tasks_blocked()
    seen = await system.ref("/app/roomy").ask("seen")
    return [dict(event.metadata) for event in seen if event.payload == payload]


# -- ctx.publish / ctx.publish_nowait ----------------------------------------------
async def test_ctx_publish_timeout_is_no_metadata_and_bounds_the_wait(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_app() as (system, _gate):
        await fill_stuck(system)
        start = trio.current_time()
        with trio.fail_after(60):
            count = await system.ref("/app/pub").ask(("publish", "a.b", "x", {"timeout": 2.0}))
        waited = trio.current_time() - start
        assert count == 1  # roomy had room; stuck did not, within the timeout
        assert waited == pytest.approx(2.0, abs=0.01)
        assert overflows(system, "x") == [("/app/stuck", "overflow")]
        assert await roomy_metadata(system, "x") == [{}]


async def test_ctx_publish_timeout_with_a_tag_keeps_the_tag_as_metadata(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_app() as (system, _gate):
        keywords = {"timeout": 1.0, "msg_id": "m1", "correlation_id": "c1", "tag": "t"}
        count = await system.ref("/app/pub").ask(("publish", "a.b", "x", keywords))
        assert count == 2  # both had room: no wait
        assert await roomy_metadata(system, "x") == [{"tag": "t"}]


async def test_ctx_publish_timeout_zero_delivers_only_where_there_is_room(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_app() as (system, _gate):
        await fill_stuck(system)
        start = trio.current_time()
        count = await system.ref("/app/pub").ask(("publish", "a.b", "x", {"timeout": 0}))
        assert trio.current_time() == start
        assert count == 1
        assert overflows(system, "x") == [("/app/stuck", "overflow")]


async def test_ctx_publish_nowait_timeout_is_no_metadata(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_app() as (system, _gate):
        await fill_stuck(system)
        count = await system.ref("/app/pub").ask(("publish_nowait", "a.b", "x", {"timeout": 5.0}))
        assert count == 1  # it never waits: the full one gets a dead letter at once
        assert overflows(system, "x") == [("/app/stuck", "overflow")]
        assert await roomy_metadata(system, "x") == [{}]


@pytest.mark.parametrize("how", ["publish", "publish_nowait"])
@pytest.mark.parametrize("timeout", [-1, -0.5, math.nan])
async def test_ctx_publish_refuses_a_negative_or_nan_timeout(
    autojump_clock: trio.abc.Clock, how: str, timeout: float
) -> None:
    async with open_app() as (system, _gate):
        answer = await system.ref("/app/pub").ask((how, "a.b", "x", {"timeout": timeout}))
        assert isinstance(answer, ValueError)
        assert "timeout" in str(answer)
        assert system.bus.stats()["published"] == 0  # refused before anything was published


class Loop(Actor):
    """Subscribes `mine` with room for one; on ``E`` it publishes `then` with a timeout.
    Handling waits for `gate` first."""

    mailbox = Mailbox(capacity=1)

    def __init__(self, mine: str, then: str, gate: trio.Event) -> None:
        self.mine, self.then, self.gate = mine, then, gate
        self.counts: list[int] = []
        self.metadata: list[Any] = []

    async def on_start(self) -> None:
        self.ctx.subscribe(self.mine)

    async def receive(self, msg: Any) -> Any:
        if msg == "counts":
            return list(self.counts), list(self.metadata)
        await self.gate.wait()
        if isinstance(msg, Event):
            self.metadata.append(dict(msg.metadata))
            if msg.payload == "E":
                self.counts.append(await self.ctx.publish(self.then, "F", timeout=5.0))
        return None


async def test_a_publish_with_a_timeout_is_still_an_edge_of_the_wait_for_graph(
    autojump_clock: trio.abc.Clock,
) -> None:
    """x and y, both full, each publish to the other's topic with timeout=5 from their
    handlers: the second wait would close a cycle and is refused at once (``deadlock``),
    so the other publish gets through long before its timeout."""
    gate = trio.Event()
    tree = Supervisor(
        "app",
        children=[
            child(Loop, name="x", args=("to-x", "to-y", gate)),
            child(Loop, name="y", args=("to-y", "to-x", gate)),
        ],
    )
    async with runtime.open_system(tree) as system:
        x, y = system.ref("/app/x"), system.ref("/app/y")
        for ref in (x, y):
            ref.tell(Event("kick", "E", "test", 0, 0.0))  # in hand: will publish
        await trio.testing.wait_all_tasks_blocked()
        for ref in (x, y):
            ref.tell("filler")  # full
        start = trio.current_time()
        gate.set()
        with trio.fail_after(60):
            await trio.testing.wait_all_tasks_blocked()
            (x_counts, x_meta), (y_counts, y_meta) = await x.ask("counts"), await y.ask("counts")
        assert trio.current_time() - start < 5.0
        assert sorted(x_counts + y_counts) == [0, 1]  # one refused (deadlock), one delivered
        letters = system.dead_letters.recent(100, reason="deadlock")
        assert len(letters) == 1
        assert [m for m in x_meta + y_meta if m] == []  # `timeout` is no metadata
        assert system.dead_letters.recent(100, reason="overflow") == []


# -- system.bus.publish / publish_nowait ---------------------------------------------
@pytest.mark.parametrize("how", ["publish", "publish_nowait"])
async def test_bus_publish_takes_metadata_keywords(
    autojump_clock: trio.abc.Clock, how: str
) -> None:
    async with runtime.open_system(Supervisor("app")) as system:
        async with system.bus.stream("a.>") as events:

            async def publish(*args: Any, **keywords: Any) -> int:
                if how == "publish":
                    return await system.bus.publish(*args, **keywords)
                return system.bus.publish_nowait(*args, **keywords)

            assert await publish("a.b", 1, foo=1) == 1
            assert await publish("a.b", 2, metadata={"bar": 2}, foo=1) == 1
            assert await publish("a.b", 3, metadata={"bar": 2}) == 1
            assert await publish("a.b", 4, timeout=3.0, correlation_id="c", msg_id="m") == 1
            got = [events.receive_nowait() for _ in range(4)]
        assert [dict(e.metadata) for e in got] == [{"foo": 1}, {"bar": 2, "foo": 1}, {"bar": 2}, {}]
        assert (got[3].correlation_id, got[3].msg_id) == ("c", "m")


@pytest.mark.parametrize("how", ["publish", "publish_nowait"])
async def test_bus_publish_refuses_a_metadata_key_given_both_ways(
    autojump_clock: trio.abc.Clock, how: str
) -> None:
    async with runtime.open_system(Supervisor("app")) as system:
        with pytest.raises(ValueError, match="'foo'"):
            if how == "publish":
                await system.bus.publish("a.b", 1, metadata={"foo": 1, "bar": 2}, foo=2)
            else:
                system.bus.publish_nowait("a.b", 1, metadata={"foo": 1, "bar": 2}, foo=2)
        assert system.bus.stats()["published"] == 0


@pytest.mark.parametrize("how", ["publish", "publish_nowait"])
@pytest.mark.parametrize("timeout", [-1, math.nan])
async def test_bus_publish_refuses_a_negative_or_nan_timeout(
    autojump_clock: trio.abc.Clock, how: str, timeout: float
) -> None:
    async with runtime.open_system(Supervisor("app")) as system:
        with pytest.raises(ValueError, match="timeout"):
            if how == "publish":
                await system.bus.publish("a.b", 1, timeout=timeout)
            else:
                system.bus.publish_nowait("a.b", 1, timeout=timeout)
        assert system.bus.stats()["published"] == 0


async def test_bus_publish_timeout_bounds_the_wait(autojump_clock: trio.abc.Clock) -> None:
    async with open_app() as (system, gate):
        await fill_stuck(system)
        start = trio.current_time()
        with trio.fail_after(60):
            count = await system.bus.publish("a.b", "x", timeout=2.0)
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)
        assert count == 1
        assert overflows(system, "x") == [("/app/stuck", "overflow")]
        assert await roomy_metadata(system, "x") == [{}]
        # it was let go at the deadline: stuck's line is empty, and the next
        # event is let in once stuck drains
        assert system.ref("/app/stuck")._cell.mailbox.statistics().senders_waiting == 0
        gate.set()
        with trio.fail_after(60):
            assert await system.bus.publish("a.b", "y", timeout=2.0) == 2


async def test_bus_publish_nowait_timeout_does_not_apply(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_app() as (system, _gate):
        await fill_stuck(system)
        start = trio.current_time()
        assert system.bus.publish_nowait("a.b", "x", timeout=10.0) == 1
        assert trio.current_time() == start
        assert overflows(system, "x") == [("/app/stuck", "overflow")]


async def test_a_publish_with_a_timeout_cancelled_before_it_strands_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Cancelled before its timeout, the publish dead-letters the event for the full
    subscriber at once (``overflow``) and the cancellation propagates."""
    async with open_app() as (system, _gate):
        await fill_stuck(system)
        result: list[int] = []
        with trio.move_on_after(1.0) as scope:
            result.append(await system.bus.publish("a.b", "x", timeout=10.0))
        assert scope.cancelled_caught
        assert result == []
        assert overflows(system, "x") == [("/app/stuck", "overflow")]
        assert system.ref("/app/stuck")._cell.mailbox.statistics().senders_waiting == 0
        assert await roomy_metadata(system, "x") == [{}]
