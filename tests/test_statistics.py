"""Typed statistics (STYLE.md, "Statistics are objects, not dicts"): `Bus.statistics`
and `Bridge.statistics` return frozen attrs classes whose every field has a docstring,
and `Bus.stats` / `Bridge.snapshot_stats` are the same values as dicts (`to_dict`).

Bridge calls run on real threads: every wait is bounded by `trio.fail_after`, and a
test waits for a thread through a `threading.Event`, never by sleeping.
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
import textwrap
import threading
from typing import Any, ClassVar

import attrs
import pytest
import trio
import trio.testing

import runtime
from runtime import (
    Actor,
    Bridge,
    BridgeStatistics,
    BusStatistics,
    Event,
    Mailbox,
    Supervisor,
    child,
)

WAIT = 30.0  # generous bound for anything a real thread must do

BUS_KEYS = [
    "published",
    "system_published",
    "delivered",
    "dropped",
    "duplicates",
    "topics",
    "subscriptions",
]
"""The keys of `Bus.stats()` (DESIGN.md), in order."""

BRIDGE_KEYS = [
    "mode",
    "max_workers",
    "submitted",
    "completed",
    "failed",
    "abandoned",
    "abandoned_running",
    "active",
    "peak_active",
    "queued",
    "run_ms_p50",
    "run_ms_p99",
    "wait_ms_p50",
    "wait_ms_p99",
    "healthy",
    "warnings",
]
"""The keys of the bridge's snapshot ``stats`` (docs/concepts/bridge.md), in order."""


# -- every field has a docstring ---------------------------------------------------


def undocumented_fields(cls: type) -> list[str]:
    """The attrs fields of `cls` whose annotated line in the class body is not followed
    by a non-empty string (the attribute docstring Sphinx shows)."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = next(node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)).body
    documented: set[str] = set()
    for statement, following in zip(body, [*body[1:], None], strict=True):
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
            and following.value.value.strip()
        ):
            documented.add(statement.target.id)
    return [field.name for field in attrs.fields(cls) if field.name not in documented]


@attrs.frozen
class HalfDocumented:
    """A class for the check itself: one field documented, two not."""

    said: int
    """Documented."""
    unsaid: int
    empty: int
    """ """


def test_the_docstring_check_finds_a_field_without_one() -> None:
    assert undocumented_fields(HalfDocumented) == ["unsaid", "empty"]


@pytest.mark.parametrize("cls", [BusStatistics, BridgeStatistics])
def test_every_field_says_what_it_counts(cls: type) -> None:
    assert attrs.has(cls)
    assert undocumented_fields(cls) == []
    assert inspect.getdoc(cls)


# -- the bus -----------------------------------------------------------------------


class Recorder(Actor):
    """Subscribes to ``orders.*``; with a `gate`, ``"hold"`` keeps it busy until the
    gate is set (its mailbox then fills up behind it)."""

    subscriptions = ("orders.*",)

    def __init__(self, gate: trio.Event | None = None) -> None:
        self.gate = gate
        self.events: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        if msg == "hold" and self.gate is not None:
            await self.gate.wait()
        elif msg == "events":
            return list(self.events)
        elif isinstance(msg, Event):
            self.events.append(msg.payload)
        return None


async def test_bus_statistics_count_deliveries_drops_and_duplicates() -> None:
    """Two actors and a stream subscribe; one actor's mailbox (one place, ``drop_new``)
    is full: two publishes reach three and two subscribers, the second is dropped for
    the full one, and a repeated `msg_id` is a duplicate."""
    gate = trio.Event()
    tree = Supervisor(
        "app",
        children=[
            child(Recorder, name="roomy"),
            child(
                Recorder,
                name="full",
                args=(gate,),
                mailbox=Mailbox(capacity=1, overflow="drop_new"),
            ),
        ],
    )
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            bus = system.bus
            system.ref("/app/full").tell("hold")
            await trio.testing.wait_all_tasks_blocked()
            before = bus.statistics()
            assert before.subscriptions == 2
            async with bus.stream("orders.>") as events:
                assert await bus.publish("orders.new", 1) == 3  # "full" takes its last place
                assert await bus.publish("orders.new", 2, msg_id="order-2") == 2
                assert await bus.publish("orders.new", 2, msg_id="order-2") == 0  # duplicate
                after = bus.statistics()
                assert [events.receive_nowait().payload for _ in range(2)] == [1, 2]

            assert after.published - before.published == 2
            assert after.delivered - before.delivered == 5
            assert after.dropped - before.dropped == 1
            assert after.duplicates - before.duplicates == 1
            assert after.subscriptions == 3  # the stream too
            assert after.topics["orders.new"] == 2
            letters = "system.deadletter"
            assert after.topics[letters] - before.topics.get(letters, 0) == 1
            assert after.system_published - before.system_published >= 1  # that dead letter

            now = bus.statistics()
            assert now.subscriptions == 2  # the stream closed
            assert after.subscriptions == 3, "statistics taken earlier changed"
            assert bus.stats() == now.to_dict()
            assert list(bus.stats()) == BUS_KEYS
            assert bus.stats()["topics"] == dict(now.topics)
            bus.stats()["topics"]["orders.new"] = 99  # a fresh dict each time
            assert bus.statistics().topics["orders.new"] == 2
            gate.set()
            assert await system.ref("/app/roomy").ask("events") == [1, 2]


async def test_bus_statistics_are_frozen_and_hashable() -> None:
    with trio.fail_after(WAIT):
        async with runtime.open_system(Supervisor("app", children=[])) as system:
            stats = system.bus.statistics()
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                stats.published = 5  # type: ignore[misc]
            assert stats == system.bus.statistics()
            assert hash(stats) == hash(system.bus.statistics())


def test_the_thread_bus_gives_the_same_statistics() -> None:
    """`ThreadedBus.statistics` runs `Bus.statistics` on the loop."""
    with runtime.start_in_thread(Supervisor("app", children=[])) as handle:
        assert handle.bus.publish("orders.new", 1) == 0  # nobody subscribes
        stats = handle.bus.statistics()
        assert isinstance(stats, BusStatistics)
        assert (stats.published, stats.topics["orders.new"], stats.subscriptions) == (1, 1, 0)
        assert handle.bus.stats()["published"] == 1


# -- the bridge --------------------------------------------------------------------


class SeenBridge(Bridge):
    """A `Bridge` that keeps its running instance where the test can read it (users
    see a bridge only through its ref and its stats)."""

    running: ClassVar[list[Bridge]] = []

    async def on_start(self) -> None:
        await super().on_start()
        SeenBridge.running.append(self)


def the_bridge(system: runtime.System, path: str) -> Bridge:
    """The `Bridge` instance running at `path`."""
    return [b for b in SeenBridge.running if b.ctx.path == path][-1]  # the latest start


def without_times(stats: BridgeStatistics) -> BridgeStatistics:
    """`stats` with its latency percentiles (real time, never the same twice) as None."""
    return attrs.evolve(stats, run_ms_p50=None, run_ms_p99=None, wait_ms_p50=None, wait_ms_p99=None)


def wait_for(gate: threading.Event) -> None:
    if not gate.wait(WAIT):
        raise TimeoutError("test gate never opened")


async def test_bridge_statistics_count_calls_that_succeed_fail_queue_and_are_given_up() -> None:
    """A bridge of one worker: a call returns, one raises, then one holds the worker
    while a second waits for it in the bridge and a third in its mailbox; the third's
    caller gives up before the bridge takes it."""
    tree = Supervisor("app", children=[child(SeenBridge, name="one", kwargs={"max_workers": 1})])
    started, gate = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        wait_for(gate)
        return "held"

    try:
        with trio.fail_after(WAIT):
            async with runtime.open_system(tree) as system:
                bridge = the_bridge(system, "/app/one")
                idle = BridgeStatistics(
                    mode="thread",
                    max_workers=1,
                    submitted=0,
                    completed=0,
                    failed=0,
                    abandoned=0,
                    abandoned_running=0,
                    active=0,
                    peak_active=0,
                    queued=0,
                    run_ms_p50=None,
                    run_ms_p99=None,
                    wait_ms_p50=None,
                    wait_ms_p99=None,
                    healthy=True,
                    warnings="",
                )
                assert bridge.statistics() == idle
                assert await system.run_blocking(operator.add, 2, 3, bridge="/app/one") == 5
                with pytest.raises(ZeroDivisionError):
                    await system.run_blocking(operator.truediv, 1, 0, bridge="/app/one")
                done = bridge.statistics()
                assert without_times(done) == attrs.evolve(
                    idle, submitted=2, completed=1, failed=1, peak_active=1
                )
                assert done.run_ms_p50 is not None and done.run_ms_p99 is not None
                assert done.wait_ms_p50 is not None and done.wait_ms_p99 is not None

                results: list[Any] = []

                async def call(fn: Any, *args: Any) -> None:
                    results.append(await system.run_blocking(fn, *args, bridge="/app/one"))

                given_up = trio.CancelScope()

                async def give_up() -> None:
                    with given_up:
                        await call(operator.add, 0, 0)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call, hold)
                    await trio.to_thread.run_sync(wait_for, started)
                    nursery.start_soon(call, operator.add, 1, 1)  # waits in the bridge
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(give_up)  # waits in the mailbox
                    await trio.testing.wait_all_tasks_blocked()
                    busy = bridge.statistics()
                    assert without_times(busy) == attrs.evolve(
                        without_times(done), submitted=4, active=1, queued=2
                    )
                    assert bridge.snapshot_stats() == busy.to_dict()
                    given_up.cancel()
                    await trio.testing.wait_all_tasks_blocked()
                    gate.set()
                assert sorted(results, key=str) == [2, "held"]
                # queued behind the given-up call or started at once: either way, that
                # one was let go of by the time this returns
                assert await system.run_blocking(operator.add, 1, 2, bridge="/app/one") == 3

                end = bridge.statistics()
                assert without_times(end) == attrs.evolve(
                    without_times(done), submitted=6, completed=4, abandoned=1
                )
                assert bridge.snapshot_stats() == end.to_dict()
                assert list(end.to_dict()) == BRIDGE_KEYS
                assert system.snapshot().find("/app/one").stats == bridge.statistics().to_dict()
                with pytest.raises(attrs.exceptions.FrozenInstanceError):
                    end.completed = 0  # type: ignore[misc]
    finally:
        gate.set()


def test_statistics_topics_cannot_be_changed_and_to_dict_gives_a_plain_dict() -> None:
    stats = runtime.BusStatistics(
        published=1,
        system_published=0,
        delivered=0,
        dropped=0,
        duplicates=0,
        topics={"a.b": 1},
        subscriptions=0,
    )
    with pytest.raises(TypeError):
        stats.topics["a.b"] = 2  # type: ignore[index]
    as_dict = stats.to_dict()
    assert type(as_dict["topics"]) is dict and as_dict["topics"] == {"a.b": 1}
    json.dumps(as_dict)


async def test_a_bridge_snapshot_stats_make_the_typed_object_again() -> None:
    tree = Supervisor("app", children=[child(Bridge, name="b", kwargs={"max_workers": 1})])
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            assert await system.run_blocking(len, "abc", bridge="/app/b") == 3
            stats = system.snapshot().find("/app/b").stats
            typed = BridgeStatistics(**stats)
            assert typed.completed == 1 and typed.to_dict() == stats
