"""Second attack on the kernel, odd values: a message whose ``__class__`` raises
(a dead ``weakref.proxy``), a backoff past 1,024 restarts, numbers too large for a
float where seconds are expected."""

from __future__ import annotations

import gc
import math
import random
import weakref
from typing import Any

import pytest
import trio

import runtime
from runtime import Actor, Backoff, Mailbox, Supervisor, child
from runtime.spec import check_timeout


class Thing:
    pass


def dead_proxy() -> Any:
    """A weakref.proxy whose referent is gone: reading its ``__class__`` raises
    ReferenceError, so `isinstance` does too (only `type()` is safe)."""
    thing = Thing()
    proxy = weakref.proxy(thing)
    del thing
    gc.collect()
    with pytest.raises(ReferenceError):
        isinstance(proxy, int)
    return proxy


class Ignores(Actor):
    async def receive(self, msg: Any) -> Any:
        return runtime.UNHANDLED


class Watcher(Actor):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def on_start(self) -> None:
        self.ctx.watch(self.ctx.system.ref("/app/i"))

    async def receive(self, msg: Any) -> Any:
        self.seen.append(type(msg).__name__)


async def test_a_dead_proxy_is_dead_lettered_not_a_crash(autojump_clock: Any) -> None:
    """Unhandled, it is dead-lettered (the actor crashed: ReferenceError in the
    runtime's own isinstance); overflowing a drop_old mailbox it is dead-lettered
    (the tell raised); queued when its actor stops, it is dead-lettered and the
    watchers are told (the slot's end broke off half-way); told to a supervisor, it
    is dead-lettered (the supervisor crashed, and its children with it)."""
    seen: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Ignores, name="i", restart="temporary"),
            child(Ignores, name="d", mailbox=Mailbox(1, "drop_old")),
            child(Watcher, name="w", args=(seen,)),
        ],
    )
    async with runtime.open_system(tree) as system:
        proxy = dead_proxy()
        i, d = system.ref("/app/i"), system.ref("/app/d")
        i.tell(proxy)
        await trio.testing.wait_all_tasks_blocked()
        assert system.snapshot().find("/app/i").state == "running"
        assert system.snapshot().find("/app/i").failed == 0
        assert system.dead_letters.counts["unhandled"] == 1

        for _ in range(3):
            d.tell(proxy)  # the first fills it, the next two push the older one out
        assert system.dead_letters.counts["overflow"] == 2
        await trio.testing.wait_all_tasks_blocked()
        assert system.dead_letters.counts["unhandled"] == 2  # the one d kept

        system.ref("/app").tell(proxy)  # a supervisor handles no user message
        await trio.testing.wait_all_tasks_blocked()
        assert system.dead_letters.counts["unhandled"] == 3
        assert system.snapshot().find("/app").restarts == 0

        for _ in range(2):
            i.tell(proxy)
        await system.terminate_child("/app/i")  # (i handles them: unhandled, again)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["Terminated"]
        assert system.snapshot().find("/app").failed == 0


class Flaky(Actor):
    async def on_start(self) -> None:
        self.ctx.ref.tell("die")

    async def receive(self, msg: Any) -> Any:
        raise RuntimeError("flaky")


async def test_restarting_for_ever_with_a_backoff_goes_past_1024_restarts(
    autojump_clock: Any,
) -> None:
    """'Retry for ever, with a backoff' (a huge max_restarts and window): the delay of
    the 1,025th restart in the window is the backoff's max, not an OverflowError that
    took the supervisor down (2.0 ** 1024)."""
    tree = Supervisor(
        "app",
        max_restarts=10**9,
        within=10**6,
        backoff=Backoff(min=0.001, max=0.01),
        children=[child(Flaky, name="f")],
    )
    async with runtime.open_system(tree) as system:
        with trio.fail_after(600):
            while system.snapshot().find("/app/f").restarts <= 1100:
                await trio.sleep(1)
        assert system.snapshot().find("/app").failed == 0


def test_a_backoff_delay_past_a_float_is_its_max() -> None:
    backoff = Backoff(min=0.1, max=10.0, jitter=0.0)
    assert backoff.delay(1025, random.Random(1)) == 10.0
    assert backoff.delay(10**6, random.Random(1)) == 10.0


def test_a_timeout_past_a_float_means_none() -> None:
    """An int too large for a float is a wait longer than any: no timeout (it raised
    OverflowError, which no caller expects)."""
    assert check_timeout(10**400) == math.inf
    with pytest.raises(ValueError):
        check_timeout(-(10**400))


@pytest.mark.parametrize(
    "make",
    [
        lambda: child(Ignores, shutdown=10**400),
        lambda: child(Ignores, hibernate_after=10**400),
        lambda: Supervisor("s", within=10**400),
        lambda: Supervisor("s", within=True),
        lambda: Backoff(min=1, max=10**400),
    ],
)
def test_seconds_past_a_float_are_refused_when_the_spec_is_made(make: Any) -> None:
    """A ValueError saying what to write (it was an OverflowError, or for shutdown
    nothing until the stop, where math.isfinite raised)."""
    with pytest.raises(ValueError):
        make()


async def test_ask_with_a_timeout_past_a_float_waits_without_one(autojump_clock: Any) -> None:
    tree = Supervisor("app", children=[child(Echo, name="e")])
    async with runtime.open_system(tree) as system:
        assert await system.ref("/app/e").ask("hi", timeout=10**400) == "hi"


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


def noticed(_event: Any) -> None:
    pass


async def test_a_dead_proxy_told_to_a_system_actor_is_dead_lettered(autojump_clock: Any) -> None:
    """The system actors check their messages as the kernel does (`type`, not
    `isinstance`): a dead proxy told to ``/system/deadletters``, ``/system/bus`` or a
    bus callback's actor is unhandled, not a ReferenceError that crashed it."""
    async with runtime.open_system(Supervisor("app", children=[])) as system:
        system.bus.subscribe("noticed")(noticed)
        await trio.testing.wait_all_tasks_blocked()
        (callback,) = system.snapshot().find("/system/callbacks").children
        paths = ["/system/deadletters", "/system/bus", callback.path]
        proxy = dead_proxy()
        for path in paths:
            system.ref(path).tell(proxy)
        await trio.testing.wait_all_tasks_blocked()
        assert system.dead_letters.counts["unhandled"] == 3
        assert [system.snapshot().find(path).failed for path in paths] == [0, 0, 0]
