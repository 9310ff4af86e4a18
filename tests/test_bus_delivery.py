"""Delivery without a global lock (issue 12): per-mailbox lines, one total order,
rule 5's wait-for graph for publishes, cancellation, publish_nowait and threads."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import UNHANDLED, Actor, Event, Mailbox, Supervisor, child
from runtime.deadletters import DeadLettersQuery

WAIT = 30.0  # a real-time bound for anything involving threads


class Sub(Actor):
    """Subscribes to `patterns`; while `gate` (a trio.Event) is not set, handling
    an event waits for it, so the mailbox fills up behind the event in hand."""

    def __init__(
        self, patterns: tuple[str, ...], gate: trio.Event | None = None, once: bool = False
    ) -> None:
        self.patterns = patterns
        self.gate = gate
        self.once = once
        self.seen: list[Any] = []

    async def on_start(self) -> None:
        for pattern in self.patterns:
            self.ctx.subscribe(pattern, once=self.once)

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event():
                if self.gate is not None:
                    await self.gate.wait()
                self.seen.append(msg.payload)
                return None
            case "seen":
                return list(self.seen)
            case "hold":
                assert self.gate is not None
                await self.gate.wait()
            case ("publish", topic, payload):
                return await self.ctx.publish(topic, payload)
            case ("subscribe", pattern):
                self.ctx.subscribe(pattern)
            case ("fill_then_publish", topic, payload):
                self.ctx.ref.tell("filler")  # own mailbox full while the handler runs
                return await self.ctx.publish(topic, payload)
            case ("publish_nowait", topic, payload):
                return self.ctx.publish_nowait(topic, payload)
            case _:
                self.seen.append(msg)
                return None


def app(*children: Any) -> Supervisor:
    return Supervisor("app", children=list(children))


def tiny(capacity: int = 1) -> Mailbox:
    return Mailbox(capacity=capacity, overflow="block")


def held_pair(*others: Any) -> tuple[Supervisor, trio.Event, trio.Event]:
    """Subscribers a and b of "t" with one-message mailboxes, each holding its events
    at its own gate (returned with the tree), and `others` beside them."""
    gate_a, gate_b = trio.Event(), trio.Event()
    tree = app(
        child(Sub, name="a", args=(("t",), gate_a), mailbox=tiny()),
        child(Sub, name="b", args=(("t",), gate_b), mailbox=tiny()),
        *others,
    )
    return tree, gate_a, gate_b


async def fill(system: runtime.System) -> None:
    """Make a and b of `held_pair` full: one event in hand, one queued."""
    await system.bus.publish("t", 0)
    await system.bus.publish("t", 1)


async def dead(system: runtime.System, reason: str) -> list[tuple[str, Any]]:
    letters = await system.ref("/system/deadletters").ask(DeadLettersQuery(reason=reason))
    return [
        (letter.recipient, letter.message.payload)
        for letter in letters
        if isinstance(letter.message, Event)
    ]


async def test_a_publish_takes_its_place_in_every_line_before_it_waits(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Topics t1 and t2 match the two full subscribers in opposite orders; freed in
    either order they still agree on the order of the waiting events."""
    gate_a, gate_b = trio.Event(), trio.Event()
    tree = app(
        child(Sub, name="b", args=(("t2",), gate_b), mailbox=tiny()),
        child(Sub, name="a", args=(("t1", "t2"), gate_a), mailbox=tiny()),
    )
    async with runtime.open_system(tree) as system:
        await system.ref("/app/b").ask(("subscribe", "t1"))  # t1 matches a, b; t2 b, a
        await system.bus.publish("t1", 0)  # in hand at both
        await system.bus.publish("t1", 1)  # queued at both: both full
        counts: dict[str, int] = {}

        async def publish(topic: str, payload: str) -> None:
            counts[payload] = await system.bus.publish(topic, payload)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish, "t1", "x")  # waits in a's line, then b's
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(publish, "t2", "y")  # would wait in b's first
            await trio.testing.wait_all_tasks_blocked()
            assert system.ref("/app/a").mailbox_depth == 1  # nothing got past a full box
            gate_b.set()
            await trio.testing.wait_all_tasks_blocked()
            gate_a.set()
        assert counts == {"x": 2, "y": 2}
        assert await system.ref("/app/a").ask("seen") == [0, 1, "x", "y"]
        assert await system.ref("/app/b").ask("seen") == [0, 1, "x", "y"]


async def test_a_full_subscriber_delays_only_publishers_of_its_events(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = trio.Event()
    tree = app(
        child(Sub, name="slow", args=(("slow.*",), gate), mailbox=tiny()),
        child(Sub, name="other", args=(("other.*",),)),
    )
    async with runtime.open_system(tree) as system:
        async with trio.open_nursery() as nursery:
            for i in range(3):  # the third waits in slow's line
                nursery.start_soon(system.bus.publish, "slow.x", i)
                await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(1):  # another topic's publisher never waits
                for i in range(100):
                    assert await system.bus.publish("other.x", i) == 1
            assert await system.ref("/app/other").ask("seen") == list(range(100))
            gate.set()
        assert await system.ref("/app/slow").ask("seen") == [0, 1, 2]


async def test_a_subscriber_publishing_to_its_own_full_topic_dead_letters_deadlock(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The README pattern with a loop: a subscriber of `data.*` publishes `data.echo`."""
    tree = app(
        child(Sub, name="echo", args=(("data.*",),), mailbox=tiny()),
        child(Sub, name="watcher", args=(("data.*",),)),
    )
    async with runtime.open_system(tree) as system:
        echo = system.ref("/app/echo")
        with trio.fail_after(5):
            count = await echo.ask(("fill_then_publish", "data.echo", "self"), timeout=None)
        assert count == 1  # the watcher; not itself
        assert await dead(system, "deadlock") == [("/app/echo", "self")]
        assert system.snapshot().dead_letters["deadlock"] == 1
        assert "self" in await system.ref("/app/watcher").ask("seen")


class Pair(Actor):
    """Subscribes to `mine`; on "go" waits for `start`, then publishes to `theirs`."""

    mailbox = Mailbox(capacity=1, overflow="block")

    def __init__(self, mine: str, theirs: str, start: trio.Event) -> None:
        self.mine, self.theirs, self.start = mine, theirs, start
        self.seen: list[Any] = []
        self.count: int | None = None

    async def on_start(self) -> None:
        self.ctx.subscribe(self.mine)

    async def receive(self, msg: Any) -> Any:
        match msg:
            case "go":
                await self.start.wait()
                self.count = await self.ctx.publish(self.theirs, self.ctx.name)
            case Event():
                self.seen.append(msg.payload)
            case "result":
                return self.count, self.seen
            case _:
                self.seen.append(msg)
        return None


async def test_two_subscribers_publishing_to_each_other_do_not_deadlock(
    autojump_clock: trio.abc.Clock,
) -> None:
    """a waits for room at b while b waits for room at a: the second wait is refused."""
    start = trio.Event()
    tree = app(
        child(Pair, name="a", args=("to-a", "to-b", start)),
        child(Pair, name="b", args=("to-b", "to-a", start)),
        child(Sub, name="c", args=(("to-c",),)),
    )
    async with runtime.open_system(tree) as system:
        a, b = system.ref("/app/a"), system.ref("/app/b")
        a.tell("go")
        b.tell("go")
        await trio.testing.wait_all_tasks_blocked()
        a.tell("filler")  # both full while they publish to each other
        b.tell("filler")
        start.set()
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()
            assert await system.bus.publish("to-c", 1) == 1  # the bus is not stuck
            (count_a, seen_a), (count_b, seen_b) = await a.ask("result"), await b.ask("result")
        refused = await dead(system, "deadlock")
        assert len(refused) == 1  # one of the two waits closed the cycle
        recipient, publisher = refused[0]
        results = {"a": (count_a, seen_a), "b": (count_b, seen_b)}
        other = "a" if publisher == "b" else "b"
        assert recipient == f"/app/{other}"  # the refused publisher's event, for the other
        assert results[publisher] == (0, ["filler", other])  # it got the other's event
        assert results[other] == (1, ["filler"])  # its own event was dead-lettered
        assert [*seen_a, *seen_b].count("filler") == 2


async def test_a_cancelled_publish_dead_letters_what_it_had_not_delivered(
    autojump_clock: trio.abc.Clock,
) -> None:
    tree, gate_a, gate_b = held_pair(child(Sub, name="c", args=(("t",),)))
    async with runtime.open_system(tree) as system:
        await fill(system)
        with trio.move_on_after(10) as scope:
            await system.bus.publish("t", "cut")
        assert scope.cancelled_caught
        assert sorted(await dead(system, "overflow")) == [("/app/a", "cut"), ("/app/b", "cut")]
        assert system.ref("/app/a").mailbox_depth == 1  # nothing stranded in a line
        gate_a.set()
        gate_b.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await system.ref("/app/a").ask("seen") == [0, 1]
        assert await system.ref("/app/c").ask("seen") == [0, 1, "cut"]


async def test_a_publish_cancelled_after_one_line_let_it_in_counts_that_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    tree, gate_a, gate_b = held_pair()
    async with runtime.open_system(tree) as system:
        await fill(system)
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def publish() -> None:
                with scope:
                    await system.bus.publish("t", "x")

            nursery.start_soon(publish)
            await trio.testing.wait_all_tasks_blocked()
            gate_b.set()  # b lets it in, a does not
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
        assert await dead(system, "overflow") == [("/app/a", "x")]
        assert await system.ref("/app/b").ask("seen") == [0, 1, "x"]
        gate_a.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await system.ref("/app/a").ask("seen") == [0, 1]


async def test_publish_nowait_overflows_behind_waiting_publishers(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Never queued invisibly: behind a line, publish_nowait dead-letters at once."""
    gate = trio.Event()
    tree = app(
        child(Sub, name="a", args=(("t",), gate), mailbox=tiny(2)),
        child(Sub, name="b", args=(("t",),)),
    )
    async with runtime.open_system(tree) as system:
        for i in range(3):  # one in hand, two queued
            assert system.bus.publish_nowait("t", i) == 2
            await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(system.bus.publish, "t", "waits")
            await trio.testing.wait_all_tasks_blocked()
            assert system.ref("/app/a").mailbox_depth == 2
            # a has a line now: even once room is made, nowait may not jump it
            assert system.bus.publish_nowait("t", "nowait") == 1
            gate.set()
        assert await dead(system, "overflow") == [("/app/a", "nowait")]
        assert await system.ref("/app/a").ask("seen") == [0, 1, 2, "waits"]
        assert await system.ref("/app/b").ask("seen") == [0, 1, 2, "waits", "nowait"]


async def test_send_and_publish_share_one_line(autojump_clock: trio.abc.Clock) -> None:
    gate = trio.Event()
    tree = app(child(Sub, name="a", args=(("t",), gate), mailbox=tiny()))
    async with runtime.open_system(tree) as system:
        a = system.ref("/app/a")
        await system.bus.publish("t", 0)
        await system.bus.publish("t", 1)  # in hand, and queued
        async with trio.open_nursery() as nursery:
            for i in range(2, 8):
                if i % 2:
                    nursery.start_soon(a.send, i)
                else:
                    nursery.start_soon(system.bus.publish, "t", i)
                await trio.testing.wait_all_tasks_blocked()
            assert a.mailbox_depth == 1
            gate.set()
        assert await a.ask("seen") == list(range(8))


async def test_a_subscriber_stopping_dead_letters_the_line_as_stopped(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = trio.Event()
    tree = app(
        child(Sub, name="a", args=(("t",), gate), mailbox=tiny(), shutdown=1),
        child(Sub, name="b", args=(("t",),)),
    )
    async with runtime.open_system(tree) as system:
        await system.bus.publish("t", 0)
        await system.bus.publish("t", 1)
        counts: list[int] = []

        async def publish() -> None:
            counts.append(await system.bus.publish("t", 2))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            await trio.testing.wait_all_tasks_blocked()
            await system.terminate_child("/app/a")
        assert counts == [1]  # b only
        assert ("/app/a", 2) in await dead(system, "stopped")
        assert await dead(system, "overflow") == []


# -- threads -------------------------------------------------------------------


def run_in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `fn` on a plain thread; return what it returned or raise what it raised."""
    out: dict[str, Any] = {}

    def main() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=main)
    thread.start()
    return thread, out


def test_a_thread_publish_waits_in_the_line_until_its_timeout() -> None:
    started = threading.Event()
    release = threading.Event()

    class Slow(Actor):
        subscriptions = ("t",)

        def __init__(self) -> None:
            self.seen: list[Any] = []

        async def receive(self, msg: Any) -> Any:
            if isinstance(msg, Event):
                if msg.payload == "hold":
                    started.set()
                    # waits without stalling the loop, until the test says so
                    await trio.to_thread.run_sync(release.wait, WAIT)
                self.seen.append(msg.payload)
                return None
            if msg == "seen":
                return list(self.seen)
            return UNHANDLED

    tree = app(
        child(Slow, name="slow", mailbox=tiny()),
        child(Sub, name="fast", args=(("t",),)),
        child(Sub, name="other", args=(("other",),)),
    )
    with runtime.start_in_thread(tree) as system:
        assert system.publish("t", "hold") == 2
        assert started.wait(WAIT)
        assert system.publish("t", "fills") == 2
        # the line is waited in up to the timeout; then overflow, and the count is exact
        assert system.publish("t", "late", timeout=0.2) == 1
        with pytest.raises(ValueError, match="timeout"):
            system.publish("t", "bad", timeout=-1)
        thread, out = run_in_thread(system.publish, "t", "waits")
        thread.join(0.2)
        assert thread.is_alive()  # no timeout: the thread blocks in the line
        # meanwhile, another thread's publish on another topic is not held up
        other, other_out = run_in_thread(system.publish, "other", "x")
        other.join(WAIT)
        assert other_out == {"value": 1}
        assert thread.is_alive()
        release.set()
        thread.join(WAIT)
        assert out == {"value": 2}
        assert system.ref("/app/slow").ask_blocking("seen") == ["hold", "fills", "waits"]
        letters = system.ref("/system/deadletters").ask_blocking(
            DeadLettersQuery(reason="overflow")
        )
        assert [(x.recipient, x.message.payload) for x in letters] == [("/app/slow", "late")]
        assert "bad" not in system.ref("/app/fast").ask_blocking("seen")


async def test_publishing_once_the_system_has_stopped_raises_runtime_closed() -> None:
    tree = app(child(Sub, name="a", args=(("t",),)))
    async with runtime.open_system(tree) as system:
        assert await system.bus.publish("t", 1) == 1
    before = system.bus.stats()["published"]
    with pytest.raises(runtime.RuntimeClosed):
        await system.bus.publish("t", 2)
    with pytest.raises(runtime.RuntimeClosed):
        system.bus.publish_nowait("t", 3)
    with pytest.raises(runtime.RuntimeClosed):
        system.publish("t", 4)
    thread, out = run_in_thread(system.publish, "t", 5)
    thread.join(WAIT)
    assert isinstance(out.get("error"), runtime.RuntimeClosed)
    assert system.bus.stats()["published"] == before  # nothing recorded


async def test_a_once_subscription_is_held_by_the_event_that_takes_its_place(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A full `once` subscriber gets one event, never two: the first publish to take a
    place in its line holds the subscription."""
    gate = trio.Event()
    tree = app(child(Sub, name="a", args=(("t",), gate, True), mailbox=tiny()))
    async with runtime.open_system(tree) as system:
        a = system.ref("/app/a")
        a.tell("hold")
        await trio.testing.wait_all_tasks_blocked()
        a.tell("queued")  # busy and full
        counts: dict[str, int] = {}

        async def publish(payload: str) -> None:
            counts[payload] = await system.bus.publish("t", payload)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish, "first")  # takes the place: once is held
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(publish, "second")
            await trio.testing.wait_all_tasks_blocked()
            assert counts == {"second": 0}
            gate.set()
        assert counts == {"first": 1, "second": 0}
        assert await a.ask("seen") == ["queued", "first"]
        assert system.bus.stats()["subscriptions"] == 0


async def test_a_once_subscription_is_back_when_its_event_never_got_there(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = trio.Event()
    tree = app(child(Sub, name="a", args=(("t",), gate, True), mailbox=tiny()))
    async with runtime.open_system(tree) as system:
        a = system.ref("/app/a")
        a.tell("hold")
        await trio.testing.wait_all_tasks_blocked()
        a.tell("queued")
        with trio.move_on_after(1):
            await system.bus.publish("t", "cut")
        assert await dead(system, "overflow") == [("/app/a", "cut")]
        assert system.bus.stats()["subscriptions"] == 1  # nothing reached it: still once
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await system.bus.publish("t", "next") == 1
        assert await system.bus.publish("t", "after") == 0
        assert await a.ask("seen") == ["queued", "next"]


async def test_a_place_that_would_close_a_cycle_is_refused_before_waiting_elsewhere(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A full subscriber publishing to its own topic, with another full subscriber of
    it: its own place is refused (deadlock) at once, not after the other line."""
    gate = trio.Event()
    tree = app(  # slow subscribes first: its line comes first in the publish
        child(Sub, name="slow", args=(("data.*",), gate), mailbox=tiny()),
        child(Sub, name="echo", args=(("data.*",),), mailbox=tiny()),
    )
    async with runtime.open_system(tree) as system:
        await system.bus.publish("data.a", 0)  # slow: in hand
        await system.bus.publish("data.a", 1)  # slow: full
        await trio.testing.wait_all_tasks_blocked()
        echo = system.ref("/app/echo")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo.ask, ("fill_then_publish", "data.echo", "self"), None)
            await trio.testing.wait_all_tasks_blocked()
            # echo still waits in slow's line, and its own place was refused already
            assert await dead(system, "deadlock") == [("/app/echo", "self")]
            gate.set()
        assert await system.ref("/app/slow").ask("seen") == [0, 1, "self"]
