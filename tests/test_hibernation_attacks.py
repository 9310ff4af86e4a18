"""Attacks on hibernation (`child(..., hibernate_after=)`).

Each test tries to break one promise of the design: one message at a time and
in order, nothing lost (handled or dead-lettered with a reason), every task
accounted for at shutdown, no hang, and every semantic of an actor that keeps
its task (restarts, watch, timers, ``ctx.nursery``, snapshots, Ctrl-C,
contextvars).  Waits are bounded by `trio.fail_after`; time is virtual.
"""

from __future__ import annotations

import contextvars
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, ActorStopped, Supervisor, child


def task_names() -> list[str]:
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for sub in nursery.child_tasks:
                walk(sub)

    walk(trio.lowlevel.current_root_task())
    return names


def node(system: runtime.System, path: str) -> Any:
    return system.snapshot().find(path)


class Recorder(Actor):
    """Logs every message; flags a handler that overlaps another of its incarnation."""

    def __init__(self, log: list[Any], stops: list[Any] | None = None) -> None:
        self.log = log
        self.stops = stops if stops is not None else []
        self.inside = False
        self.count = 0

    async def receive(self, msg: Any) -> Any:
        assert not self.inside, "two handlers of one incarnation overlap"
        self.inside = True
        try:
            if msg == "slow":
                await trio.sleep(0.5)
            if msg == "crash":
                raise RuntimeError("asked to crash")
            self.count += 1
            self.log.append(msg)
            return self.count
        finally:
            self.inside = False

    async def on_stop(self, reason: Any) -> None:
        self.stops.append(reason)


class Plain(Actor):
    """No on_start, no on_stop: starts and stops without a task."""

    def __init__(self, log: list[Any] | None = None) -> None:
        self.log = log if log is not None else []

    async def receive(self, msg: Any) -> Any:
        self.log.append(msg)
        return msg


# -- races between mail and the end of the task ------------------------------------
@pytest.mark.parametrize("offset", [-0.001, 0.0, 0.001])
async def test_a_message_at_the_instant_it_hibernates_is_handled(
    autojump_clock: Any, offset: float
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app", children=[child(Recorder, name="r", args=(log,), hibernate_after=1.0)]
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/r")
            sent = []
            for i in range(40):
                await ref.ask(("first", i))
                sent.append(("first", i))
                # the next one arrives right around the end of the grace period
                await trio.sleep(1.0 + offset)
                ref.tell(("second", i))
                sent.append(("second", i))
                ref.tell(("third", i))
                sent.append(("third", i))
            await ref.ask("last")
            assert log == [*sent, "last"]


async def test_mail_during_the_old_tasks_nursery_exit(autojump_clock: Any) -> None:
    """The task that hibernated still leaves its nursery (a schedule point) when the
    next message starts a new task: the two never run a handler together."""
    log: list[Any] = []
    tree = Supervisor(
        "app", children=[child(Recorder, name="r", args=(log,), hibernate_after=0)]
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/r")
            expected = []
            for i in range(200):
                ref.tell(i)
                expected.append(i)
                # zero, one or two schedule points: the put lands at each step of the
                # old task's way out
                for _ in range(i % 3):
                    await trio.lowlevel.cancel_shielded_checkpoint()
            assert await ref.ask("end") == len(expected) + 1
            assert log == [*expected, "end"]


# -- timers and background tasks -----------------------------------------------------
class Ticker(Actor):
    def __init__(self) -> None:
        self.timer: Any = None

    async def receive(self, msg: Any) -> Any:
        if msg == "start":
            self.timer = self.ctx.every(1.0, "tick")
        elif msg == "cancel":
            self.timer.cancel()
        return None


async def test_a_cancelled_timer_lets_a_zero_grace_actor_hibernate(autojump_clock: Any) -> None:
    """hibernate_after=0 hibernates as soon as nothing keeps it awake: a timer that
    was cancelled (its task ends a moment later) must not keep it awake for ever."""
    tree = Supervisor("app", children=[child(Ticker, name="t", hibernate_after=0)])
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/t")
            await ref.ask("start")
            await trio.sleep(3.5)
            await ref.ask("cancel")
            await trio.sleep(30)
            assert node(system, "/app/t").hibernating


class Forever(Actor):
    async def receive(self, msg: Any) -> Any:
        self.ctx.nursery.start_soon(trio.sleep_forever)
        return None


async def test_a_background_task_does_not_make_a_short_grace_spin(autojump_clock: Any) -> None:
    """While a task in ctx.nursery keeps it awake, the actor does not wake up every
    `hibernate_after` to look whether it may hibernate yet (a busy loop for a
    short grace period)."""
    steps = 0

    class Count(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            nonlocal steps
            if task.name == "/app/f":
                steps += 1

    tree = Supervisor("app", children=[child(Forever, name="f", hibernate_after=0.001)])
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            await system.ref("/app/f").ask("go")
            counter = Count()
            trio.lowlevel.add_instrument(counter)
            try:
                await trio.sleep(20)
            finally:
                trio.lowlevel.remove_instrument(counter)
            assert not node(system, "/app/f").hibernating
    assert steps < 100  # not 20,000 (one per millisecond)


# -- Ctrl-C ------------------------------------------------------------------------
class InterruptsInInit(Actor):
    def __init__(self) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize("hibernate_after", [None, 0])
async def test_ctrl_c_in_init_stops_the_started_siblings_gracefully(
    autojump_clock: Any, hibernate_after: float | None
) -> None:
    """A KeyboardInterrupt while an actor is made is a request to stop everything
    gracefully, whether or not the actor starts without a task: the siblings
    started before it run their on_stop."""
    stops: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Recorder, name="before", args=([], stops)),
            child(InterruptsInInit, name="i", hibernate_after=hibernate_after),
        ],
    )
    with trio.fail_after(60), pytest.raises(KeyboardInterrupt):
        async with runtime.open_system(tree):
            pass  # pragma: no cover - the start fails
    assert stops == ["shutdown"]


@pytest.mark.parametrize("hibernate_after", [None, 0])
async def test_ctrl_c_in_init_of_a_dynamic_child_stops_gracefully(
    autojump_clock: Any, hibernate_after: float | None
) -> None:
    stops: list[Any] = []
    tree = Supervisor("app", children=[child(Recorder, name="sibling", args=([], stops))])
    with trio.fail_after(60), pytest.raises(KeyboardInterrupt):
        async with runtime.open_system(tree) as system:
            with pytest.raises(ActorStopped):
                await system.start_child(
                    "/app", child(InterruptsInInit, name="i", hibernate_after=hibernate_after)
                )
            await trio.sleep_forever()
    assert stops == ["shutdown"]


class Interrupts(Actor):
    def __init__(self, stops: list[Any]) -> None:
        self.stops = stops

    async def receive(self, msg: Any) -> Any:
        if msg == "ctrl-c":
            raise KeyboardInterrupt
        return msg

    async def on_stop(self, reason: Any) -> None:
        self.stops.append(reason)


async def test_ctrl_c_in_a_woken_handler_stops_everything_gracefully(autojump_clock: Any) -> None:
    stops: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Interrupts, name=f"a{i}", args=(stops,), hibernate_after=0) for i in range(5)
        ],
    )
    with trio.fail_after(60), pytest.raises(KeyboardInterrupt):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            system.ref("/app/a2").tell("ctrl-c")
            system.ref("/app/a3").tell("after")  # woken as the system stops
            await trio.sleep_forever()
    assert sorted(map(str, stops)) == ["shutdown"] * 5


# -- stop, kill and cancel while waking ------------------------------------------------
async def test_kill_while_a_resume_task_is_pending_does_not_hang(autojump_clock: Any) -> None:
    class Stubborn(Actor):
        async def receive(self, msg: Any) -> Any:
            return msg

        async def on_stop(self, reason: Any) -> None:
            await trio.sleep_forever()

    tree = Supervisor(
        "app",
        children=[
            child(Stubborn, name=f"s{i}", hibernate_after=0, shutdown=None) for i in range(3)
        ],
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            system.ref("/app/s1").tell("wake")  # resume task started, not yet run
            system.stop()
            system.kill()


async def test_stop_while_a_resume_task_is_pending_handles_or_dead_letters(
    autojump_clock: Any,
) -> None:
    log: list[Any] = []
    stops: list[Any] = []
    tree = Supervisor(
        "app", children=[child(Recorder, name="r", args=(log, stops), hibernate_after=0)]
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            ref = system.ref("/app/r")
            ref.tell("a")
            ref.tell("b")
            await system.terminate_child("/app/r")
            dead = system.dead_letters.counts["stopped"]
    assert stops == ["shutdown"]
    assert len(log) + dead == 2


async def test_an_outer_cancel_while_actors_wake_stops_gracefully(autojump_clock: Any) -> None:
    stops: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Recorder, name=f"r{i}", args=([], stops), hibernate_after=0) for i in range(10)
        ],
    )
    with trio.fail_after(60):
        with trio.move_on_after(1) as scope:
            async with runtime.open_system(tree) as system:
                await trio.sleep(0.999)
                for i in range(10):
                    system.ref(f"/app/r{i}").tell("x")
                await trio.sleep_forever()
        assert scope.cancelled_caught
    assert stops == ["shutdown"] * 10


# -- contextvars ---------------------------------------------------------------------
REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST", default="none")


class ReadsContext(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "set":
            REQUEST.set("the actor's own")
            return None
        return REQUEST.get()


@pytest.mark.parametrize("hibernate_after", [None, 0, 1])
async def test_the_senders_contextvars_do_not_leak_into_the_actor(
    autojump_clock: Any, hibernate_after: float | None
) -> None:
    """An actor's handlers run in its own task's context whether it keeps its task or
    not: not in a copy of the context of whoever happened to wake it."""
    tree = Supervisor(
        "app", children=[child(ReadsContext, name="c", hibernate_after=hibernate_after)]
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/c")
            await trio.sleep(2)

            async def sender(value: str) -> str:
                REQUEST.set(value)
                return await ref.ask("get")  # type: ignore[no-any-return]

            assert await sender("caller's") == "none"
            await ref.ask("set")
            await trio.sleep(2)  # it hibernates (if it may) with its own value set
            assert await sender("another caller's") == "the actor's own"
