"""Hibernation (`child(..., hibernate_after=)`): an idle actor without a trio task.

An actor that may hibernate keeps every semantic of one with a task: one
message at a time, in order, state kept, restarts, watch, timers,
``ctx.nursery``, stops with `on_stop`, and snapshots that show it ``running``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from test_chaos import all_tasks

import runtime
from runtime import (
    Actor,
    ActorCrashed,
    ActorRef,
    ChildSpec,
    Deadlock,
    Supervisor,
    Terminated,
    child,
)
from runtime.testing import wait_for


def task_names() -> list[str]:
    """The names of every task of this trio run."""
    return [task.name for task in all_tasks()]


def node(system: runtime.System, path: str) -> Any:
    """The `ActorInfo` of the actor at `path` in a snapshot taken now."""
    return system.snapshot().find(path)


@asynccontextmanager
async def one_actor(
    spec: ChildSpec | Supervisor, *, fail_after: float
) -> AsyncIterator[tuple[runtime.System, ActorRef]]:
    """Run the tree ``/app`` whose one child is `spec`; yield the system and the
    child's ref.  Its start, the body and its stop must end within `fail_after`
    seconds (virtual ones on the autojump clock)."""
    tree = Supervisor("app", children=[spec])
    with trio.fail_after(fail_after):
        async with runtime.open_system(tree) as system:
            yield system, system.ref(f"/app/{spec.name}")


class Counter(Actor):
    """Counts what it got; answers asks with the count; records overlapping handlers."""

    def __init__(self, log: list[Any] | None = None) -> None:
        self.count = 0
        self.inside = 0
        self.overlaps = 0
        self.log = log if log is not None else []

    async def receive(self, msg: Any) -> Any:
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        try:
            if msg == "slow":
                await trio.sleep(0.01)
            if msg == "crash":
                raise RuntimeError("asked to crash")
            if msg == "overlaps":
                return self.overlaps
            self.count += 1
            self.log.append(msg)
            return self.count
        finally:
            self.inside -= 1

    async def on_stop(self, reason: Any) -> None:
        self.log.append(("stopped", reason))


async def test_an_actor_without_on_start_starts_with_no_task(autojump_clock: Any) -> None:
    spec = child(Counter, name="c", hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        await trio.testing.wait_all_tasks_blocked()
        assert "/app/c" not in task_names()
        assert node(system, "/app/c").state == "running"
        assert node(system, "/app/c").hibernating
        assert await ref.ask("x") == 1
        await trio.testing.wait_all_tasks_blocked()
        assert "/app/c" not in task_names()  # hibernate_after=0: back to sleep at once
        assert await ref.ask("y") == 2  # state kept


async def test_it_keeps_its_task_for_the_grace_period(autojump_clock: Any) -> None:
    spec = child(Counter, name="c", hibernate_after=5)
    async with one_actor(spec, fail_after=60) as (system, ref):
        assert await ref.ask("x") == 1
        await trio.sleep(4)
        assert "/app/c" in task_names()
        assert not node(system, "/app/c").hibernating
        assert await ref.ask("y") == 2  # the grace period starts again
        await trio.sleep(4.5)
        assert "/app/c" in task_names()
        await trio.sleep(1)
        assert "/app/c" not in task_names()
        assert node(system, "/app/c").hibernating
        assert node(system, "/app/c").state == "running"
        assert await ref.ask("z") == 3


async def test_messages_are_handled_one_at_a_time_in_order(autojump_clock: Any) -> None:
    log: list[Any] = []
    spec = child(Counter, name="c", args=(log,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (_system, ref):
        for i in range(50):
            ref.tell(i)
            if i % 7 == 0:
                ref.tell("slow")
                await trio.sleep(0.02)  # it hibernates between some of them
        assert await ref.ask("overlaps") == 0
        assert [m for m in log if m != "slow"] == list(range(50))


async def test_a_thread_wakes_it(autojump_clock: Any) -> None:
    log: list[Any] = []
    # not one_actor: a bound in virtual time runs out while the loop waits on the thread
    tree = Supervisor("app", children=[child(Counter, name="c", args=(log,), hibernate_after=0)])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/c")

        def produce() -> None:
            for i in range(100):
                ref.tell(i)

        await trio.to_thread.run_sync(produce)
        await wait_for(lambda: len(log) == 100, timeout=10)
        assert log == list(range(100))


class Ticker(Actor):
    def __init__(self, ticks: list[float]) -> None:
        self.ticks = ticks
        self.timer: Any = None

    async def receive(self, msg: Any) -> Any:
        if msg == "start":
            self.timer = self.ctx.every(1.0, "tick")
        elif msg == "cancel":
            self.timer.cancel()
        elif msg == "tick":
            self.ticks.append(trio.current_time())
        return None


async def test_a_timer_keeps_it_awake(autojump_clock: Any) -> None:
    ticks: list[float] = []
    spec = child(Ticker, name="t", args=(ticks,), hibernate_after=0.5)
    async with one_actor(spec, fail_after=60) as (system, ref):
        await ref.ask("start")
        await trio.sleep(10.5)
        assert len(ticks) == 10  # every tick came, none lost to hibernation
        assert "/app/t" in task_names()
        await ref.ask("cancel")
        await trio.sleep(1)
        assert "/app/t" not in task_names()
        assert node(system, "/app/t").hibernating


class Background(Actor):
    def __init__(self, done: list[str]) -> None:
        self.done = done

    async def receive(self, msg: Any) -> Any:
        async def job() -> None:
            await trio.sleep(3)
            self.done.append("job")

        self.ctx.nursery.start_soon(job)
        return None


async def test_a_background_task_keeps_it_awake_and_ends_normally(autojump_clock: Any) -> None:
    done: list[str] = []
    spec = child(Background, name="b", args=(done,), hibernate_after=1)
    async with one_actor(spec, fail_after=60) as (_system, ref):
        await ref.ask("go")
        await trio.sleep(2)
        assert "/app/b" in task_names()
        await trio.sleep(1.5)
        assert done == ["job"]
        await trio.sleep(1.5)
        assert "/app/b" not in task_names()


async def test_stop_runs_on_stop_of_a_hibernating_actor(autojump_clock: Any) -> None:
    log: list[Any] = []
    spec = child(Counter, name="c", args=(log,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        await ref.ask("x")
        await trio.testing.wait_all_tasks_blocked()
        assert node(system, "/app/c").hibernating
    assert log == ["x", ("stopped", "shutdown")]


async def test_a_crash_restarts_it_with_fresh_state(autojump_clock: Any) -> None:
    log: list[Any] = []
    spec = child(Counter, name="c", args=(log,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        assert await ref.ask("a") == 1
        with pytest.raises(ActorCrashed):
            await ref.ask("crash")
        await wait_for(lambda: node(system, "/app/c").restarts == 1, timeout=5)
        assert await ref.ask("b") == 1  # a fresh actor
        await trio.testing.wait_all_tasks_blocked()
        assert node(system, "/app/c").hibernating
        assert log[0] == "a"
        assert log[1][0] == "stopped" and isinstance(log[1][1], RuntimeError)  # on_stop ran


class Watching(Actor):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, tuple) and msg[0] == "watch":
            self.ctx.watch(self.ctx.system.ref(msg[1]))
        elif isinstance(msg, Terminated):
            self.seen.append((msg.ref.path, msg.reason))
        return None


async def test_watch_notices_wake_it(autojump_clock: Any) -> None:
    seen: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Counter, name="c", restart="temporary"),
            child(Watching, name="w", args=(seen,), hibernate_after=0),
        ],
    )
    async with runtime.open_system(tree) as system:
        await system.ref("/app/w").ask(("watch", "/app/c"))
        await trio.testing.wait_all_tasks_blocked()
        assert "/app/w" not in task_names()
        await system.terminate_child("/app/c")
        await wait_for(lambda: seen == [("/app/c", "shutdown")], timeout=5)


class Subscriber(Actor):
    subscriptions = ("news.*",)

    def __init__(self, got: list[Any]) -> None:
        self.got = got

    async def receive(self, msg: Any) -> Any:
        self.got.append(msg.payload)
        return None


async def test_bus_events_wake_a_hibernating_subscriber(autojump_clock: Any) -> None:
    got: list[Any] = []
    spec = child(Subscriber, name="s", args=(got,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, _ref):
        await trio.testing.wait_all_tasks_blocked()
        assert "/app/s" not in task_names()
        for i in range(5):
            system.publish("news.today", i)
        await wait_for(lambda: got == [0, 1, 2, 3, 4], timeout=5)


class Starts(Counter):
    async def on_start(self) -> None:
        self.log.append("started")


async def test_an_actor_with_on_start_starts_with_a_task(autojump_clock: Any) -> None:
    log: list[Any] = []
    spec = child(Starts, name="c", args=(log,), hibernate_after=2)
    async with one_actor(spec, fail_after=60) as (_system, ref):
        assert log == ["started"]
        assert "/app/c" in task_names()
        await trio.sleep(2.5)
        assert "/app/c" not in task_names()
        assert await ref.ask("x") == 1
        assert log == ["started", "x"]  # on_start ran once: waking is not a restart


class AsksItself(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "self":
            try:
                await self.ctx.ref.ask("other")
            except Deadlock:
                return "deadlock"
        return "ok"


async def test_a_woken_actor_is_known_to_the_wait_for_graph(autojump_clock: Any) -> None:
    spec = child(AsksItself, name="a", hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (_system, ref):
        assert await ref.ask("self") == "deadlock"


async def test_group_restart_stops_hibernating_bystanders(autojump_clock: Any) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy="one_for_all",
        children=[
            child(Counter, name="a", args=(log,), hibernate_after=0),
            child(Counter, name="b", hibernate_after=0),
        ],
    )
    async with runtime.open_system(tree) as system:
        await system.ref("/app/a").ask("x")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ActorCrashed):
            await system.ref("/app/b").ask("crash")
        await wait_for(lambda: node(system, "/app/a").restarts == 1, timeout=5)
        assert log == ["x", ("stopped", "shutdown")]
        assert await system.ref("/app/a").ask("y") == 1


async def test_cancelling_the_system_ends_hibernating_actors(autojump_clock: Any) -> None:
    tree = Supervisor(
        "app", children=[child(Counter, name=f"c{i}", hibernate_after=0) for i in range(20)]
    )
    system_seen: list[runtime.System] = []
    with trio.fail_after(60):  # a slot left running without a task would hang the stop
        with trio.move_on_after(1):
            async with runtime.open_system(tree) as system:
                await system.ref("/app/c3").ask("x")
                system_seen.append(system)
                await trio.sleep_forever()
    system = system_seen[0]
    assert not system.is_running
    assert all(n.state == "stopped" and not n.hibernating for n in system.snapshot().root.walk())


async def test_kill_with_hibernating_children_does_not_hang(autojump_clock: Any) -> None:
    tree = Supervisor(
        "app",
        children=[child(Counter, name=f"c{i}", hibernate_after=0) for i in range(20)],
    )
    with trio.fail_after(30):
        async with runtime.open_system(tree) as system:
            await system.ref("/app/c3").ask("x")
            await trio.testing.wait_all_tasks_blocked()
            assert node(system, "/app/c3").hibernating
            system.kill()
            await trio.sleep_forever()


async def test_thousands_of_hibernating_actors_answer(autojump_clock: Any) -> None:
    tree = Supervisor(
        "app",
        children=[child(Counter, name=f"c{i}", hibernate_after=0) for i in range(2000)],
    )
    async with runtime.open_system(tree) as system:
        await trio.testing.wait_all_tasks_blocked()
        assert not any(name.startswith("/app/c") for name in task_names())
        answers = []
        for i in range(0, 2000, 97):
            answers.append(await system.ref(f"/app/c{i}").ask("x"))
        assert answers == [1] * len(answers)


def test_hibernate_after_is_checked() -> None:
    for bad in (-1, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="hibernate_after"):
            child(Counter, hibernate_after=bad)  # type: ignore[arg-type]
    assert child(Counter, hibernate_after=0).hibernate_after == 0


async def test_ctx_nursery_of_a_hibernating_actor_says_why(autojump_clock: Any) -> None:
    held: list[Actor] = []

    class Holds(Actor):
        async def receive(self, msg: Any) -> Any:
            held.append(self)
            return None

    spec = child(Holds, name="h", hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (_system, ref):
        await ref.ask("x")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="hibernating"):
            held[0].ctx.nursery  # noqa: B018


def test_a_plain_thread_asks_a_hibernating_actor() -> None:
    tree = Supervisor("app", children=[child(Counter, name="c", hibernate_after=0)])
    with runtime.start_in_thread(tree) as handle:
        ref = handle.ref("/app/c")
        assert [ref.ask_blocking(i, timeout=10) for i in range(20)] == list(range(1, 21))


class Plain(Actor):
    """No on_start and no on_stop of its own: starts and stops without a task."""

    async def receive(self, msg: Any) -> Any:
        return msg


async def test_an_actor_without_on_stop_stops_without_a_task(autojump_clock: Any) -> None:
    seen: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Plain, name="p", hibernate_after=0),
            child(Watching, name="w", args=(seen,)),
        ],
    )
    async with runtime.open_system(tree) as system:
        await system.ref("/app/w").ask(("watch", "/app/p"))
        await trio.testing.wait_all_tasks_blocked()
        assert node(system, "/app/p").hibernating
        kept = system.ref("/app/p")
        await system.terminate_child("/app/p")
        assert all(n.path != "/app/p" for n in system.snapshot().root.walk())
        await wait_for(lambda: seen == [("/app/p", "shutdown")], timeout=5)
        with pytest.raises(runtime.ActorStopped):
            await kept.ask("x")


async def test_a_system_of_plain_hibernating_actors_stops(autojump_clock: Any) -> None:
    tree = Supervisor(
        "app", children=[child(Plain, name=f"p{i}", hibernate_after=0) for i in range(500)]
    )
    async with runtime.open_system(tree) as system:
        await system.ref("/app/p7").ask("x")
    assert not system.is_running
    assert all(n.state == "stopped" for n in system.snapshot().root.walk())


def test_a_remote_start_carries_hibernate_after_and_reads_the_previous_format() -> None:
    from runtime.cluster.codec import Codec
    from runtime.cluster.spawn import spec_from_wire, spec_to_wire

    def no_refs(_: Any) -> Any:
        raise AssertionError("no refs here")

    codec = Codec(ref_to_url=no_refs, url_to_ref=no_refs)
    spec = child("test_hibernation:Counter", name="c", hibernate_after=2.5)
    wire = spec_to_wire(spec, codec)
    assert spec_from_wire(wire, codec).hibernate_after == 2.5
    older = wire[:6]  # a node of the previous release sends no hibernate_after
    assert spec_from_wire(older, codec).hibernate_after is None
    assert spec_from_wire(older, codec).name == "c"


class InstanceOnStop(Actor):
    """on_stop set on the instance, not the class: it still runs when stopped."""

    def __init__(self, log: list[Any]) -> None:
        async def on_stop(reason: Any) -> None:
            log.append(("stopped", reason))

        self.on_stop = on_stop  # type: ignore[method-assign]

    async def receive(self, msg: Any) -> Any:
        return msg


async def test_an_on_stop_set_on_the_instance_runs(autojump_clock: Any) -> None:
    log: list[Any] = []
    spec = child(InstanceOnStop, name="i", args=(log,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        await ref.ask("x")
        await trio.testing.wait_all_tasks_blocked()
        assert node(system, "/app/i").hibernating
    assert log == [("stopped", "shutdown")]


class Defers(Actor):
    """Keeps the reply for later (never sends it): the asker waits on the incarnation."""

    def __init__(self) -> None:
        self.pending: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        self.pending.append(self.ctx.defer_reply())
        return None


class HangsInOnStop(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg

    async def on_stop(self, reason: Any) -> None:
        await trio.sleep_forever()


async def test_a_supervisor_cancelled_ends_its_hibernating_children(
    autojump_clock: Any,
) -> None:
    # /app/sub stops its children last first: `hangs` never finishes its on_stop, so
    # sub's own shutdown timeout cancels it while `defers` hibernates.  The hibernating
    # incarnation ends with it, and its deferred reply fails at once.
    sub = Supervisor(
        "sub",
        shutdown=1.0,
        children=[
            child(Defers, name="defers", hibernate_after=0),
            child(HangsInOnStop, name="hangs", shutdown=None),
        ],
    )
    async with runtime.open_system(Supervisor("app", children=[sub])) as system:
        outcome: list[Any] = []

        async def ask() -> None:
            try:
                await system.ref("/app/sub/defers").ask("later", timeout=60)
            except runtime.ActorStopped as error:
                outcome.append(error)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            assert node(system, "/app/sub/defers").hibernating
            await system.terminate_child("/app/sub")
        # ActorStopped from the ended incarnation, not the ask's own AskTimeout (60 s)
        assert len(outcome) == 1


class Reminds(Actor):
    """On "remind" sets a one-shot timer (`send_after`); logs when the reminder comes."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.timer: Any = None

    async def receive(self, msg: Any) -> Any:
        if msg == "remind":
            self.timer = self.ctx.send_after(5.0, "reminder")
        elif msg == "cancel":
            self.timer.cancel()
        elif msg == "reminder":
            self.log.append(("reminder", trio.current_time()))
        return None


async def test_a_send_after_timer_keeps_it_awake_until_it_fires(autojump_clock: Any) -> None:
    log: list[Any] = []
    spec = child(Reminds, name="r", args=(log,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        start = trio.current_time()
        await ref.ask("remind")
        await trio.sleep(4)
        assert "/app/r" in task_names()  # the pending timer is a task of its own
        assert not node(system, "/app/r").hibernating
        await trio.sleep(2)
        assert log == [("reminder", start + 5.0)]  # on time, not lost to hibernation
        await trio.testing.wait_all_tasks_blocked()
        assert "/app/r" not in task_names()  # fired: nothing keeps it awake
        assert node(system, "/app/r").hibernating


async def test_a_cancelled_send_after_lets_it_hibernate(autojump_clock: Any) -> None:
    log: list[Any] = []
    spec = child(Reminds, name="r", args=(log,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        await ref.ask("remind")
        await ref.ask("cancel")
        await trio.sleep(2)
        assert node(system, "/app/r").hibernating
        await trio.sleep(10)
        assert log == []  # cancelled: never sent


class Nurseries(Actor):
    """Answers the `ctx.nursery` it handles the message in."""

    async def receive(self, msg: Any) -> Any:
        return self.ctx.nursery


async def test_each_wake_gets_a_fresh_ctx_nursery(autojump_clock: Any) -> None:
    spec = child(Nurseries, name="n", hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        seen: list[trio.Nursery] = []  # kept, so that no two share an id
        for _ in range(3):
            seen.append(await ref.ask("which"))
            await trio.testing.wait_all_tasks_blocked()
            assert node(system, "/app/n").hibernating
        assert len({id(n) for n in seen}) == 3  # one per activation, none kept across


async def test_a_restarted_actor_without_on_start_starts_hibernating_again(
    autojump_clock: Any,
) -> None:
    spec = child(Counter, name="c", hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        assert await ref.ask("x") == 1
        with pytest.raises(ActorCrashed):
            await ref.ask("crash")
        await wait_for(lambda: node(system, "/app/c").restarts == 1, timeout=5)
        await trio.testing.wait_all_tasks_blocked()
        assert "/app/c" not in task_names()  # the new incarnation has no task yet
        info = node(system, "/app/c")
        assert info.state == "running" and info.hibernating
        assert await ref.ask("y") == 1  # a fresh instance answers
