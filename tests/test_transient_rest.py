"""A `transient` child that exited normally rests: it keeps its place, stopped, with
no incarnation (OTP keeps its spec with no pid), until a group restart covers it.

While it rests nothing can reach it: what was queued behind its stop, and what
is sent to it later, is dead-lettered as ``stopped`` and asks fail with
`ActorStopped` (before, they waited in a mailbox nobody read, and an ask with
no timeout hung for ever).  Its watchers get `Terminated`, its subscriptions
end, and ``system.actor.stopped`` is published.  A group restart gives it a
fresh incarnation and a fresh mailbox.

Every test runs on trio's autojump clock; none asserts on a duration.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing
from systhread import WAIT, SystemThread
from test_hibernation import Watching
from test_otp_semantics import Listener, settle, started, w

from runtime import ActorStopped, Mailbox, Supervisor, child, open_system


def restart_group(log: list[Any], *, mailbox: Any = None, backoff: Any = None) -> Supervisor:
    """``/app``, `one_for_all`, with a worker ``a`` and a `transient` ``t``: a crash of
    ``a`` restarts ``t`` too, also after ``t`` stopped normally and rests."""
    return Supervisor(
        "app",
        strategy="one_for_all",
        backoff=backoff,
        children=[w("a", log), w("t", log, restart="transient", mailbox=mailbox)],
    )


def letters(system: Any, path: str) -> list[tuple[Any, str]]:
    """The dead letters for `path`, oldest first: (message, reason)."""
    found = system.dead_letters.recent(1000)
    return [(d.message, d.reason) for d in reversed(found) if d.recipient == path]


def stopped_events(system: Any, path: str) -> list[str]:
    events = system.bus.history("system.actor.stopped", limit=100)
    return [e.payload["reason"] for e in events if e.payload["path"] == path]


async def test_an_ask_with_no_timeout_to_a_resting_child_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor("app", children=[w("t", log, restart="transient"), w("x", log)])
    with trio.fail_after(60):
        async with open_system(tree) as system:
            t = system.ref("/app/t")
            assert await t.ask("stop") == "stopping"
            await settle()
            assert [c.state for c in system.which_children("/app")] == ["stopped", "running"]
            assert system.ref("/app/t") == t  # it keeps its place
            assert not t.is_alive
            with pytest.raises(ActorStopped):
                await t.ask("ping", timeout=None)
            t.tell("told")
            await t.send("sent")
            assert letters(system, "/app/t") == [
                ("ping", "stopped"),
                ("told", "stopped"),
                ("sent", "stopped"),
            ]
            assert stopped_events(system, "/app/t") == ["normal"]


async def test_what_was_queued_behind_the_stop_is_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor("app", children=[w("t", log, restart="transient")])
    with trio.fail_after(60):
        async with open_system(tree) as system:
            t = system.ref("/app/t")
            failures: list[BaseException] = []

            async def ask_late() -> None:
                try:
                    await t.ask("late", timeout=None)
                except ActorStopped as exc:
                    failures.append(exc)

            t.tell("stop")
            t.tell("behind")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask_late)  # queued behind the stop too
            assert len(failures) == 1
            assert letters(system, "/app/t") == [("behind", "stopped"), ("late", "stopped")]
            assert system.snapshot().find("/app/t").mailbox_depth == 0


async def test_watchers_are_told_when_a_transient_child_rests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    seen: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            w("t", log, restart="transient"),
            child(Watching, name="before", args=(seen,)),
            child(Watching, name="after", args=(seen,)),
        ],
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            await system.ref("/app/before").ask(("watch", "/app/t"))
            assert await system.ref("/app/t").ask("stop") == "stopping"
            await settle()
            assert seen == [("/app/t", "normal")]
            # watching it while it rests answers at once, as for a slot that is gone
            await system.ref("/app/after").ask(("watch", "/app/t"))
            await settle()
            assert seen == [("/app/t", "normal")] * 2


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_a_group_restart_gives_a_resting_child_a_fresh_mailbox(
    strategy: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """What was sent while it rested is not handled by the next incarnation; that one
    takes messages and subscribes again as any new incarnation does."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy=strategy,
        children=[
            w("a", log),
            child(Listener, name="t", kwargs={"log": log}, restart="transient"),
        ],
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            t = system.ref("/app/t")
            assert await t.ask("stop") == "stopping"
            await settle()
            t.tell("while resting")
            assert system.publish("boom", 1) == 0  # its subscription ended with it
            log.clear()
            system.ref("/app/a").tell("crash")
            await settle()
            assert started(log) == ["a", "t"]
            assert t.is_alive
            assert await t.ask("ping") == "pong"
            assert [m for m, _ in letters(system, "/app/t")] == ["while resting"]
            assert system.snapshot().find("/app/t").mailbox_depth == 0
            assert system.publish("boom", 2) == 1  # subscribed again (and it crashes on it)


def test_threads_reach_a_resting_child_only_as_dead_letters() -> None:
    """A thread that held room in the mailbox before the child rested (credits) tells
    into the closed mailbox: dead-lettered; after the restart its tells are handled, and
    the new mailbox never holds more than its capacity.  (Real threads: real time.)"""
    log: list[Any] = []
    tree = restart_group(log, mailbox=Mailbox(capacity=8, overflow="block"))
    runner = SystemThread(tree).start()
    try:
        system = runner.system
        assert system is not None
        t = runner.call(system.ref, "/app/t")
        for i in range(3):
            t.tell(("early", i))  # the first takes room for the next ones (credits)
        assert t.ask_blocking("ping", timeout=WAIT) == "pong"
        assert t.ask_blocking("stop", timeout=WAIT) == "stopping"
        wait_until(lambda: not t.is_alive, "the child rests")
        for i in range(5):
            t.tell(("resting", i))
        with pytest.raises(ActorStopped):
            t.ask_blocking("ping", timeout=None)
        assert runner.call(letters, system, "/app/t") == [
            *((("resting", i), "stopped") for i in range(5)),
            ("ping", "stopped"),
        ]
        runner.call(system.ref("/app/a").tell, "crash")
        wait_until(lambda: t.is_alive, "the group restart")
        for i in range(20):
            t.tell(("after", i), timeout=WAIT)
        assert t.ask_blocking("ping", timeout=WAIT) == "pong"
        stats = runner.call(lambda: system.snapshot().find("/app/t"))
        assert stats.mailbox_depth == 0
        assert stats.mailbox_high_water <= 8
        assert len(runner.call(letters, system, "/app/t")) == 6  # none after the restart
        assert [m for m in log if m[0] == "start"] == [
            ("start", "a"),
            ("start", "t"),
            ("start", "a"),
            ("start", "t"),
        ]
    finally:
        runner.stop(clean=True)


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


async def test_a_stopped_child_of_a_stopping_tree_is_not_announced_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A resting child released when its supervisor stops publishes no second
    ``system.actor.stopped`` and dead-letters nothing more."""
    log: list[Any] = []
    tree = Supervisor("app", children=[w("t", log, restart="transient")])
    with trio.fail_after(60):
        async with open_system(tree) as system:
            assert await system.ref("/app/t").ask("stop") == "stopping"
            await settle()
            await system.terminate_child("/app/t")
            assert stopped_events(system, "/app/t") == ["normal"]
            assert letters(system, "/app/t") == []


async def test_the_high_water_of_a_slot_survives_its_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`mailbox_high_water` is the most ever queued in the slot's mailbox: the fresh
    mailbox a rested child gets at its restart carries it on."""
    log: list[Any] = []
    tree = restart_group(log)
    with trio.fail_after(60):
        async with open_system(tree) as system:
            t = system.ref("/app/t")
            for _ in range(5):
                t.tell("x")
            await settle()
            assert await t.ask("stop") == "stopping"
            await settle()
            system.ref("/app/a").tell("crash")
            await settle()
            assert await t.ask("ping") == "pong"
            assert system.snapshot().find("/app/t").mailbox_high_water == 5
