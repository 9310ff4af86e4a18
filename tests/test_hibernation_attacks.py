"""Attacks on hibernation (`child(..., hibernate_after=)`).

Each test tries to break one promise of the design: one message at a time and
in order, nothing lost (handled or dead-lettered with a reason), every task
accounted for at shutdown, no hang, and every semantic of an actor that keeps
its task (restarts, watch, timers, ``ctx.nursery``, snapshots, Ctrl-C,
contextvars).  Waits are bounded by `trio.fail_after`; time is virtual.
"""

from __future__ import annotations

import contextvars
import functools
import json
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from test_hibernation import HangsInOnStop, Watching, node, one_actor, task_names

import runtime
from actors import Daemon, Pool, Resize
from runtime import (
    Actor,
    ActorCrashed,
    ActorStopped,
    Deadlock,
    Mailbox,
    RestartIntensityExceeded,
    Supervisor,
    child,
)
from runtime.testing import expect_crashes, wait_for


def restarted(system: runtime.System, path: str, times: int) -> Callable[[], bool]:
    """For `wait_for`: whether the actor at `path` was restarted `times` times."""
    return lambda: node(system, path).restarts == times


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
    spec = child(Recorder, name="r", args=(log,), hibernate_after=1.0)
    async with one_actor(spec, fail_after=60) as (_system, ref):
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


class CountsTasks(Recorder):
    """A Recorder that notes how many tasks carry its path while it handles a message."""

    def __init__(self, log: list[Any], tasks: list[int]) -> None:
        super().__init__(log)
        self.tasks = tasks

    async def receive(self, msg: Any) -> Any:
        self.tasks.append(task_names().count(self.ctx.path))
        return await super().receive(msg)


async def test_mail_during_the_old_tasks_nursery_exit(autojump_clock: Any) -> None:
    """The task that hibernated still leaves its nursery (a schedule point) when the
    next message starts a new task: the two never run a handler together."""
    log: list[Any] = []
    tasks: list[int] = []
    spec = child(CountsTasks, name="r", args=(log, tasks), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (_system, ref):
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
    # the race was run: a handler ran while the task that had hibernated was still
    # leaving (about one message in ten; trio's scheduling order varies)
    assert max(tasks) == 2


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
    spec = child(Ticker, name="t", hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
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

    spec = child(Forever, name="f", hibernate_after=0.001)
    async with one_actor(spec, fail_after=60) as (system, ref):
        await ref.ask("go")
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
    tree = Supervisor(
        "app",
        children=[
            child(HangsInOnStop, name=f"s{i}", hibernate_after=0, shutdown=None) for i in range(3)
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
    spec = child(Recorder, name="r", args=(log, stops), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        await trio.testing.wait_all_tasks_blocked()
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
    spec = child(ReadsContext, name="c", hibernate_after=hibernate_after)
    async with one_actor(spec, fail_after=60) as (_system, ref):
        await trio.sleep(2)

        async def sender(value: str) -> str:
            REQUEST.set(value)
            return await ref.ask("get")  # type: ignore[no-any-return]

        assert await sender("caller's") == "none"
        await ref.ask("set")
        await trio.sleep(2)  # it hibernates (if it may) with its own value set
        assert await sender("another caller's") == "the actor's own"


# -- group restarts ----------------------------------------------------------------------
class Crashy(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("asked to crash")
        return msg


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_group_restarts_with_hibernating_siblings_lose_nothing(
    autojump_clock: Any, strategy: str
) -> None:
    log: list[Any] = []
    stops: list[Any] = []
    tree = Supervisor(
        "app",
        strategy=strategy,
        max_restarts=100,
        children=[
            child(Crashy, name="c", hibernate_after=0),
            child(Recorder, name="r", args=(log, stops), hibernate_after=0),
            child(Plain, name="p", args=(log,), hibernate_after=0),
        ],
    )
    sent: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            for round_ in range(10):
                await trio.testing.wait_all_tasks_blocked()
                for path in ("/app/r", "/app/p"):
                    system.ref(path).tell((path, round_, "before"))
                    sent.append((path, round_, "before"))
                system.ref("/app/c").tell("crash")  # the restart stops the woken siblings
                for path in ("/app/r", "/app/p"):
                    system.ref(path).tell((path, round_, "after"))
                    sent.append((path, round_, "after"))
                await wait_for(restarted(system, "/app/c", round_ + 1), timeout=10)
            for path in ("/app/r", "/app/p"):
                await system.ref(path).ask("sync")
            dead = system.dead_letters.counts
            assert dead["stopped"] == 0
            # mail queued at a restarted sibling waits for its next incarnation, in order
            assert sorted(m for m in log if m != "sync") == sorted(sent)
            for path in ("/app/r", "/app/p"):
                mine = [m for m in log if m != "sync" and m[0] == path]
                assert mine == [m for m in sent if m[0] == path]
            assert len(stops) == 10  # r's on_stop ran at each restart


# -- on_stop -----------------------------------------------------------------------------
class FailsToStop(Actor):
    def __init__(self, stops: list[Any]) -> None:
        self.stops = stops

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("asked to crash")
        return msg

    async def on_stop(self, reason: Any) -> None:
        self.stops.append(reason)
        raise ValueError("on_stop failed")


async def test_a_crash_in_on_stop_of_a_woken_actor(autojump_clock: Any) -> None:
    stops: list[Any] = []
    spec = child(FailsToStop, name="f", args=(stops,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        async with expect_crashes(count=2):  # the handler, then its on_stop
            with pytest.raises(ActorCrashed):
                await ref.ask("crash")
            await wait_for(lambda: node(system, "/app/f").restarts == 1, timeout=10)
        assert await ref.ask("x") == "x"
        await trio.testing.wait_all_tasks_blocked()
        assert node(system, "/app/f").hibernating
        async with expect_crashes(count=1):
            await system.terminate_child("/app/f")
    assert len(stops) == 2 and stops[1] == "shutdown"


class InterruptsOnStop(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg

    async def on_stop(self, reason: Any) -> None:
        raise KeyboardInterrupt


async def test_ctrl_c_in_on_stop_of_a_woken_actor(autojump_clock: Any) -> None:
    stops: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Recorder, name="r", args=([], stops), hibernate_after=0),
            child(InterruptsOnStop, name="i", hibernate_after=0),
        ],
    )
    with trio.fail_after(60), pytest.raises(KeyboardInterrupt):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            await system.terminate_child("/app/i")
            await trio.sleep_forever()
    assert stops == ["shutdown"]


# -- mailboxes: full, dropping, lines of senders, threads -----------------------------------
class Slow(Actor):
    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.inside = False

    async def receive(self, msg: Any) -> Any:
        assert not self.inside
        self.inside = True
        try:
            await trio.sleep(0.01)
            self.log.append(msg)
            return msg
        finally:
            self.inside = False


async def test_a_full_block_mailbox_with_senders_in_line(autojump_clock: Any) -> None:
    log: list[Any] = []
    mailbox = Mailbox(capacity=2, overflow="block")
    spec = child(Slow, name="s", args=(log,), hibernate_after=0, mailbox=mailbox)
    async with one_actor(spec, fail_after=600) as (_system, ref):

        async def sender(k: int) -> None:
            for i in range(20):
                await ref.send((k, i))
                if i % 5 == 0:
                    await trio.sleep(1)  # the actor hibernates between bursts

        async with trio.open_nursery() as nursery:
            for k in range(5):
                nursery.start_soon(sender, k)
        await ref.ask("end")
    assert len(log) == 101
    for k in range(5):
        assert [m for m in log if m != "end" and m[0] == k] == [(k, i) for i in range(20)]


@pytest.mark.parametrize("overflow", ["drop_new", "drop_old"])
async def test_dropping_mailboxes_account_for_every_message(
    autojump_clock: Any, overflow: str
) -> None:
    log: list[Any] = []
    mailbox = Mailbox(capacity=3, overflow=overflow)  # type: ignore[arg-type]
    spec = child(Slow, name="s", args=(log,), hibernate_after=0, mailbox=mailbox)
    sent = 0
    async with one_actor(spec, fail_after=600) as (system, ref):
        for burst in range(20):
            for i in range(burst % 7):
                ref.tell((burst, i))
                sent += 1
            await trio.sleep(1)  # all handled: it hibernates again
        overflowed = system.dead_letters.counts["overflow"]
        assert len(log) + overflowed == sent
        assert node(system, "/app/s").hibernating


def test_threads_ask_and_tell_hibernating_actors() -> None:
    """Plain threads (not the trio thread) ask and tell hibernating actors with
    small ``block`` mailboxes: every ask answered, every tell handled once, in order."""
    logs: list[list[Any]] = [[] for _ in range(4)]
    tree = Supervisor(
        "app",
        children=[
            child(
                Plain,
                name=f"p{i}",
                args=(logs[i],),
                hibernate_after=0,
                mailbox=Mailbox(capacity=2, overflow="block"),
            )
            for i in range(4)
        ],
    )
    errors: list[BaseException] = []
    with runtime.start_in_thread(tree) as handle:

        def worker(k: int) -> None:
            try:
                for i in range(50):
                    ref = handle.ref(f"/app/p{(k + i) % 4}")
                    if i % 3 == 0:
                        assert ref.ask_blocking((k, i), timeout=30) == (k, i)
                    else:
                        ref.tell((k, i), timeout=30)
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for i in range(4):
            handle.ref(f"/app/p{i}").ask_blocking("sync", timeout=30)
    assert not errors
    everything = [m for log in logs for m in log if m != "sync"]
    assert sorted(everything) == sorted((k, i) for k in range(6) for i in range(50))
    for log in logs:
        for k in range(6):
            mine = [m for m in log if m != "sync" and m[0] == k]
            assert mine == sorted(mine)  # one thread's messages to one actor, in order


# -- replies later, forwarding, the bus -------------------------------------------------------
class Defers(Actor):
    def __init__(self) -> None:
        self.pending: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        if msg == "later":
            self.pending.append(self.ctx.defer_reply())
            return None
        if msg == "answer":
            for handle in self.pending:
                handle.send("answered")
            self.pending = []
            return None
        return msg


async def test_defer_reply_across_hibernation(autojump_clock: Any) -> None:
    spec = child(Defers, name="d", hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        answers: list[Any] = []

        async def asker() -> None:
            answers.append(await ref.ask("later", timeout=30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(asker)
            nursery.start_soon(asker)
            await trio.sleep(5)
            assert node(system, "/app/d").hibernating  # with two replies owed
            ref.tell("answer")
        assert answers == ["answered", "answered"]


async def test_a_deferred_reply_of_a_stopped_hibernating_actor_fails_its_asker(
    autojump_clock: Any,
) -> None:
    spec = child(Defers, name="d", hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        async with trio.open_nursery() as nursery:

            async def stop_later() -> None:
                await trio.sleep(5)
                assert node(system, "/app/d").hibernating
                await system.terminate_child("/app/d")

            nursery.start_soon(stop_later)
            with pytest.raises(ActorStopped):
                await ref.ask("later", timeout=30)


class Forwards(Actor):
    def __init__(self, to: str) -> None:
        self.to = to

    async def receive(self, msg: Any) -> Any:
        await self.ctx.forward(self.ctx.system.ref(self.to))
        return None


async def test_forward_between_hibernating_actors(autojump_clock: Any) -> None:
    tree = Supervisor(
        "app",
        children=[
            child(Plain, name="w", hibernate_after=0),
            child(Forwards, name="f", args=("/app/w",), hibernate_after=0),
        ],
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/f")
            for i in range(20):
                assert await ref.ask(i) == i
                if i % 4 == 0:
                    await trio.testing.wait_all_tasks_blocked()
                    assert node(system, "/app/w").hibernating


class OnceSubscriber(Actor):
    def __init__(self, got: list[Any]) -> None:
        self.got = got

    async def receive(self, msg: Any) -> Any:
        if msg == "subscribe":
            self.ctx.subscribe("news.>", once=True)
            return None
        self.got.append(msg.payload)
        return None


async def test_publish_once_to_a_hibernating_subscriber(autojump_clock: Any) -> None:
    got: list[Any] = []
    spec = child(OnceSubscriber, name="s", args=(got,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        for round_ in range(5):
            await ref.ask("subscribe")
            await trio.testing.wait_all_tasks_blocked()
            assert node(system, "/app/s").hibernating
            assert system.publish("news.a", (round_, 1)) == 1
            assert system.publish("news.a", (round_, 2)) == 0
            await wait_for(lambda n=round_ + 1: len(got) == n, timeout=10)
        assert got == [(r, 1) for r in range(5)]


# -- background tasks --------------------------------------------------------------------------
class BackgroundCrash(Actor):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def receive(self, msg: Any) -> Any:
        if msg == "boom":

            async def job() -> None:
                await trio.sleep(1)
                raise RuntimeError("background job failed")

            self.ctx.nursery.start_soon(job)
        self.log.append(msg)
        return msg

    async def on_stop(self, reason: Any) -> None:
        self.log.append(("stopped", type(reason).__name__))


async def test_a_crashing_background_task_of_a_woken_actor(autojump_clock: Any) -> None:
    log: list[Any] = []
    spec = child(BackgroundCrash, name="b", args=(log,), hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        await ref.ask("x")
        await trio.testing.wait_all_tasks_blocked()
        assert node(system, "/app/b").hibernating
        async with expect_crashes(count=1):
            await ref.ask("boom")
            await wait_for(lambda: node(system, "/app/b").restarts == 1, timeout=10)
        assert ("stopped", "RuntimeError") in log
        assert await ref.ask("y") == "y"
        await trio.testing.wait_all_tasks_blocked()
        assert node(system, "/app/b").hibernating


# -- actors/: Pool and Daemon ---------------------------------------------------------------
async def test_a_pool_of_hibernating_workers(autojump_clock: Any) -> None:
    spec = Pool("pool", child(Plain, hibernate_after=0), size=3)
    async with one_actor(spec, fail_after=120) as (system, ref):
        assert [await ref.ask(i) for i in range(9)] == list(range(9))
        await trio.testing.wait_all_tasks_blocked()
        assert all(node(system, f"/app/pool/w{i}").hibernating for i in range(3))
        assert await ref.ask(Resize(5)) == 5
        assert [await ref.ask(i) for i in range(10)] == list(range(10))
        await trio.testing.wait_all_tasks_blocked()
        assert await ref.ask(Resize(1)) == 1
        assert await ref.ask("last") == "last"
        assert system.dead_letters.total == 0


class Beat(Daemon):
    interval = 1.0

    def __init__(self, beats: list[float]) -> None:
        self.beats = beats

    async def tick(self) -> None:
        self.beats.append(trio.current_time())


async def test_a_daemon_with_hibernate_after_keeps_ticking(autojump_clock: Any) -> None:
    beats: list[float] = []
    spec = child(Beat, name="d", args=(beats,), hibernate_after=0)
    async with one_actor(spec, fail_after=120) as (system, _ref):
        await trio.sleep(10.5)
        assert len(beats) == 11  # at start, then every second: none lost
        assert not node(system, "/app/d").hibernating  # its schedule keeps it awake


# -- supervisors closing with hibernating children ---------------------------------------------
async def test_escalation_with_hibernating_children(autojump_clock: Any) -> None:
    stops: list[Any] = []
    tree = Supervisor(
        "app",
        max_restarts=10,
        children=[
            Supervisor(
                "sub",
                max_restarts=1,
                within=100,
                children=[
                    child(Crashy, name="c", hibernate_after=0),
                    child(Recorder, name="r", args=([], stops), hibernate_after=0),
                    child(Plain, name="p", hibernate_after=0),
                ],
            )
        ],
    )
    with trio.fail_after(120):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            async with expect_crashes(count=3):  # two crashes, then sub gives up
                for _ in range(2):
                    with pytest.raises(ActorCrashed):
                        await system.ref("/app/sub/c").ask("crash")
                    await trio.testing.wait_all_tasks_blocked()
                await wait_for(lambda: node(system, "/app/sub").restarts == 1, timeout=10)
            for path in ("/app/sub/c", "/app/sub/r", "/app/sub/p"):
                assert await system.ref(path).ask("x") in ("x", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert all(
                node(system, p).hibernating for p in ("/app/sub/c", "/app/sub/r", "/app/sub/p")
            )
    assert stops == ["shutdown"] * 2  # sub gave up (r stopped), then the system stopped


async def test_a_nested_supervisor_stopped_while_its_children_hibernate(
    autojump_clock: Any,
) -> None:
    stops: list[Any] = []
    seen: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            Supervisor(
                "sub",
                children=[
                    child(Recorder, name=f"r{i}", args=([], stops), hibernate_after=0)
                    for i in range(5)
                ]
                + [child(Plain, name=f"p{i}", hibernate_after=0) for i in range(5)],
            ),
            child(Watching, name="w", args=(seen,), hibernate_after=0),
        ],
    )
    with trio.fail_after(120):
        async with runtime.open_system(tree) as system:
            for i in range(5):
                await system.ref("/app/w").ask(("watch", f"/app/sub/p{i}"))
            await trio.testing.wait_all_tasks_blocked()
            await system.terminate_child("/app/sub")
            assert stops == ["shutdown"] * 5
            await wait_for(lambda: len(seen) == 5, timeout=10)
            assert sorted(seen) == [(f"/app/sub/p{i}", "shutdown") for i in range(5)]
            assert all(not n.path.startswith("/app/sub") for n in system.snapshot().root.walk())


async def test_terminate_child_hands_over_to_a_hibernating_actor(autojump_clock: Any) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Slow, name="busy", args=([],), shutdown=30),
            child(Recorder, name="heir", args=(log,), hibernate_after=0),
        ],
    )
    with trio.fail_after(120):
        async with runtime.open_system(tree) as system:
            busy = system.ref("/app/busy")
            for i in range(20):
                busy.tell(i)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.015)  # one or two handled, the rest still queued
            assert node(system, "/app/heir").hibernating
            await system.terminate_child("/app/busy", hand_over_to=system.ref("/app/heir"))
            await system.ref("/app/heir").ask("end")
            handed = [m for m in log if m != "end"]
            assert handed == list(range(20 - len(handed), 20))
            assert system.dead_letters.total == 0


# -- accounting, snapshots, the wait-for graph ----------------------------------------------------
class Counts(Actor):
    def __init__(self, handled: list[int]) -> None:
        self.handled = handled

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("asked to crash")
        if msg == "slow":
            await trio.sleep(1)
        self.handled[0] += 1
        return None


async def test_handled_plus_dead_lettered_is_sent(autojump_clock: Any) -> None:
    rng = random.Random(7)
    handled = [0]
    tree = Supervisor(
        "app",
        max_restarts=10_000,
        children=[
            child(
                Counts,
                name=f"a{i}",
                args=(handled,),
                hibernate_after=rng.choice([0, 0.5, None]),
                mailbox=Mailbox(capacity=4, overflow=rng.choice(["drop_new", "drop_old"])),
            )
            for i in range(20)
        ],
    )
    sent = 0
    with trio.fail_after(600):
        async with runtime.open_system(tree) as system:
            for _ in range(2000):
                ref = system.ref(f"/app/a{rng.randrange(20)}")
                ref.tell(rng.choice(["crash", "slow", "x", "x", "x"]))
                sent += 1
                if rng.random() < 0.2:
                    await trio.sleep(rng.choice([0, 0.3, 1]))
            for i in rng.sample(range(20), 5):
                await system.terminate_child(f"/app/a{i}")
            await trio.sleep(rng.choice([0, 0.1]))
    dead = system.dead_letters
    assert dead.counts["stopped"] + dead.counts["overflow"] > 0
    assert handled[0] + dead.total == sent


async def test_snapshots_while_hibernating_and_waking(autojump_clock: Any) -> None:
    tree = Supervisor(
        "app", children=[child(Plain, name=f"p{i}", hibernate_after=0) for i in range(3)]
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            snap = system.snapshot()
            assert snap.find("/app/p0").state == "running"
            assert snap.find("/app/p0").hibernating
            system.ref("/app/p0").tell("x")  # a task is on its way: not hibernating any more
            waking = system.snapshot().find("/app/p0")
            assert waking.state == "running" and not waking.hibernating
            assert waking.mailbox_depth == 1
            as_dict = system.snapshot().to_dict()  # what the control socket sends
            found = [n for n in as_dict["root"]["children"][1]["children"] if n["name"] == "p1"]
            assert found[0]["hibernating"] is True
            assert "hibernating" in system.snapshot().render()  # troupe tree says so too
            await trio.testing.wait_all_tasks_blocked()
            assert system.snapshot().find("/app/p0").processed == 1


class AsksBack(Actor):
    """Asks `other` to ask it back: a cycle of two handlers waiting on each other."""

    def __init__(self, other: str) -> None:
        self.other = other

    async def receive(self, msg: Any) -> Any:
        if msg == "start":
            try:
                return await self.ctx.system.ref(self.other).ask("back", timeout=30)
            except Deadlock:
                return "deadlock"
        if msg == "back":
            try:
                return await self.ctx.system.ref(self.other).ask("ping", timeout=30)
            except Deadlock:
                return "deadlock"
        return "pong"


@pytest.mark.parametrize("hibernate_a", [None, 0])
async def test_the_wait_for_graph_sees_woken_actors(
    autojump_clock: Any, hibernate_a: float | None
) -> None:
    tree = Supervisor(
        "app",
        children=[
            child(AsksBack, name="a", args=("/app/b",), hibernate_after=hibernate_a),
            child(AsksBack, name="b", args=("/app/a",), hibernate_after=0),
        ],
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            for _ in range(3):
                await trio.testing.wait_all_tasks_blocked()
                # a waits on b (woken); b asks a back: a cycle, refused at once
                assert await system.ref("/app/a").ask("start", timeout=30) == "deadlock"


def make_plain() -> Actor:
    return Plain()


@pytest.mark.parametrize("factory", [make_plain, f"{__name__}:Plain"])
async def test_factory_functions_and_import_strings(autojump_clock: Any, factory: Any) -> None:
    spec = child(factory, name="p", hibernate_after=0)
    async with one_actor(spec, fail_after=60) as (system, ref):
        for i in range(3):
            assert await ref.ask(i) == i
            await trio.testing.wait_all_tasks_blocked()
            assert node(system, "/app/p").hibernating
            assert "/app/p" not in task_names()
        await system.terminate_child("/app/p")


async def test_ten_thousand_hibernating_actors_stop_at_once(autojump_clock: Any) -> None:
    stops: list[Any] = []
    n = 10_000
    tree = Supervisor(
        "app",
        children=[
            child(Recorder, name=f"r{i}", args=([], stops), hibernate_after=0)
            if i % 2
            else child(Plain, name=f"p{i}", hibernate_after=0)
            for i in range(n)
        ],
    )
    with trio.fail_after(600):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            for i in range(0, n, 7):
                system.ref(f"/app/{'r' if i % 2 else 'p'}{i}").tell("x")  # some awake
    assert len(stops) == n // 2
    assert not any(name.startswith("/app/") for name in task_names())
    assert system.dead_letters.total == 0


async def test_ctx_stop_in_a_woken_transient_actor(autojump_clock: Any) -> None:
    class StopsItself(Actor):
        async def receive(self, msg: Any) -> Any:
            if msg == "stop":
                self.ctx.stop()
            return msg

    seen: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(StopsItself, name="s", restart="transient", hibernate_after=0),
            child(Watching, name="w", args=(seen,)),
        ],
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            await system.ref("/app/w").ask(("watch", "/app/s"))
            await trio.testing.wait_all_tasks_blocked()
            system.ref("/app/s").tell("stop")
            system.ref("/app/s").tell("after")  # queued behind the stop: not handled
            await trio.testing.wait_all_tasks_blocked()
            assert node(system, "/app/s").state == "stopped"  # it keeps its place, resting
            # ... with no incarnation: what was queued is dead-lettered, watchers are told
            assert system.dead_letters.counts["stopped"] == 1
            assert node(system, "/app/s").mailbox_depth == 0
            assert seen == [("/app/s", "normal")]


async def test_the_tree_failing_with_hibernating_children(autojump_clock: Any) -> None:
    stops: list[Any] = []
    tree = Supervisor(
        "app",
        max_restarts=0,
        children=[
            child(Recorder, name="r", args=([], stops), hibernate_after=0),
            child(Plain, name="p", hibernate_after=0),
            child(Crashy, name="c", hibernate_after=0),
        ],
    )
    with trio.fail_after(60), pytest.raises(RestartIntensityExceeded):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            async with expect_crashes(count=2):  # c, then /app giving up
                system.ref("/app/c").tell("crash")
                await trio.sleep_forever()
    assert stops == ["shutdown"]
    assert not any(name.startswith("/app") for name in task_names())


class SlowToStop(Actor):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def receive(self, msg: Any) -> Any:
        self.log.append(msg)
        return msg

    async def on_stop(self, reason: Any) -> None:
        await trio.sleep(1)


async def test_terminating_a_hibernating_actor_hands_over_what_came_meanwhile(
    autojump_clock: Any,
) -> None:
    mine: list[Any] = []
    heirs: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(SlowToStop, name="s", args=(mine,), hibernate_after=0),
            child(Plain, name="heir", args=(heirs,), hibernate_after=0),
        ],
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            ref = system.ref("/app/s")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        system.terminate_child, "/app/s", hand_over_to=system.ref("/app/heir")
                    )
                )
                await trio.sleep(0.5)  # woken for its on_stop, which takes a second
                for i in range(10):
                    ref.tell(i)
            await system.ref("/app/heir").ask("end")
            assert mine == []  # it was stopping: it handled none of them
            assert heirs == [*range(10), "end"]
            assert system.dead_letters.total == 0


async def test_the_control_socket_shows_hibernating_actors(tmp_path: Any) -> None:
    folder = tmp_path / "ctl"
    tree = Supervisor("app", children=[child(Plain, name="p", hibernate_after=0)])
    with trio.fail_after(30):
        async with runtime.open_system(tree, control=True, control_dir=folder) as system:
            await trio.testing.wait_all_tasks_blocked()
            assert system.control is not None
            stream = await trio.open_unix_socket(str(system.control.path))
            async with stream:
                await stream.send_all(b'{"op": "tree"}\n')
                data = b""
                while not data.endswith(b"\n"):
                    data += await stream.receive_some(1 << 20)
            reply = json.loads(data)
            found = [
                n
                for app in reply["snapshot"]["root"]["children"]
                for n in app["children"]
                if n["path"] == "/app/p"
            ]
            assert found[0]["hibernating"] is True and found[0]["state"] == "running"
            assert "p [running]  hibernating" in reply["text"]


async def test_a_supervisor_past_its_shutdown_timeout_ends_hibernating_children(
    autojump_clock: Any,
) -> None:
    stops: list[Any] = []
    seen: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Watching, name="w", args=(seen,)),
            Supervisor(
                "sub",
                shutdown=1,
                children=[
                    child(Recorder, name="r", args=([], stops), hibernate_after=0),
                    child(Plain, name="p", hibernate_after=0),
                    child(HangsInOnStop, name="s", hibernate_after=0, shutdown=None),
                ],
            ),
        ],
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            for name in ("r", "p", "s"):
                await system.ref("/app/w").ask(("watch", f"/app/sub/{name}"))
            await trio.testing.wait_all_tasks_blocked()
            # s (stopped first) hangs in on_stop: the sub is cancelled after 1 s, and
            # r and p, still hibernating, end as cancelled tasks do (no on_stop)
            await system.terminate_child("/app/sub")
            await wait_for(lambda: len(seen) == 3, timeout=10)
            assert sorted(path for path, _ in seen) == ["/app/sub/p", "/app/sub/r", "/app/sub/s"]
            assert stops == []
            assert not any(name.startswith("/app/sub") for name in task_names())


async def test_a_nested_supervisor_restarted_while_its_children_hibernate(
    autojump_clock: Any,
) -> None:
    log: list[Any] = []
    stops: list[Any] = []
    tree = Supervisor(
        "app",
        strategy="one_for_all",
        children=[
            child(Crashy, name="c"),
            Supervisor(
                "sub",
                children=[
                    child(Recorder, name="r", args=(log, stops), hibernate_after=0),
                    child(Plain, name="p", args=(log,), hibernate_after=0),
                ],
            ),
        ],
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            async with expect_crashes(count=1):
                system.ref("/app/c").tell("crash")
                system.ref("/app/sub/r").tell("r1")
                system.ref("/app/sub/p").tell("p1")
                await wait_for(restarted(system, "/app/sub", 1), timeout=10)
            system.ref("/app/sub/r").tell("r2")
            system.ref("/app/sub/p").tell("p2")
            assert await system.ref("/app/sub/r").ask("end") in (2, 3)  # r1 before or after
            await system.ref("/app/sub/p").ask("end")
            assert [m for m in log if str(m).startswith("r")] == ["r1", "r2"]
            assert [m for m in log if str(m).startswith("p")] == ["p1", "p2"]
            assert stops == ["shutdown"]
            assert system.dead_letters.counts["stopped"] == 0  # only "crash" is dead
