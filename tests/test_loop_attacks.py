"""Attacks on the actor loop's hot path (`ActorBehaviour._loop`) and on loop health
timed from the loop's wake-up (`LoopMonitor`, no `before_task_step`).

The loop resets `current` and `reply` only where another task can observe them;
these tests observe them from everywhere they can: background tasks while a
handler waits mid-batch, `on_stop`, snapshots, `is_busy`, `expects_reply`,
around forced checkpoints, crashes, stop requests and hibernation.  Every
message sent is handled or dead-lettered with a reason.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from test_monitoring import MonitorClock

import runtime
import runtime.monitor
from runtime import Actor, ActorCrashed, Supervisor, child
from runtime.cell import BATCH
from runtime.testing import crash, expect_crashes, wait_for

WAIT = 30.0


class Observed(Actor):
    """Notes, at each look, what its own context says; looks from a background task
    while a handler waits, and from on_stop."""

    def __init__(self, looks: list[tuple[str, Any, bool, bool]]) -> None:
        self.looks = looks
        self.handled: list[Any] = []

    def look(self, where: str) -> None:
        ctx = self.ctx
        info = ctx.system.snapshot().find(ctx.path)
        self.looks.append((where, info.current, ctx.ref.is_busy, ctx.expects_reply))

    async def on_start(self) -> None:
        self.ctx.nursery.start_soon(self.watch)

    async def watch(self) -> None:
        while True:
            await trio.sleep(0)
            self.look("background")

    async def receive(self, msg: Any) -> Any:
        if msg == "yield":
            await trio.sleep(0)
            await trio.sleep(0)
        elif msg == "stop":
            self.ctx.stop()
        elif msg == "boom":
            raise RuntimeError("boom")
        elif msg == "defer":
            handle = self.ctx.defer_reply()
            self.ctx.nursery.start_soon(self._answer_later, handle)
            await trio.sleep(0)
        self.handled.append(msg)
        return msg

    async def _answer_later(self, handle: Any) -> None:
        await trio.sleep(0.01)
        handle.send("later")

    async def on_stop(self, reason: Any) -> None:
        self.look("on_stop")


async def test_what_other_tasks_see_mid_batch_matches_the_message_in_hand() -> None:
    looks: list[tuple[str, Any, bool, bool]] = []
    tree = Supervisor("app", children=[child(Observed, name="o", kwargs={"looks": looks})])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/o")
        with trio.fail_after(WAIT):
            # One batch: an ask, then tells, one that yields mid-batch, then an ask
            # that yields; then a deferred ask; another task watches all along.
            answer = trio.Event()
            results: list[Any] = []

            async def ask(msg: Any) -> None:
                results.append(await ref.ask(msg))
                if len(results) == 3:
                    answer.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "first")
                await trio.sleep(0.001)
                ref.tell("told")
                ref.tell("yield")
                nursery.start_soon(ask, "yield")
                await trio.sleep(0.001)
                nursery.start_soon(ask, "defer")
            await answer.wait()
            looked = len(looks)
            await wait_for(lambda: len(looks) > looked)  # a look at the idle actor
        assert sorted(map(str, results)) == ["first", "later", "yield"]
        during = [look for look in looks if look[0] == "background" and look[2]]
        assert ("background", "str", True, False) in during  # the told "yield"
        assert ("background", "str", True, True) in during  # the asked "yield"
        # Whatever was seen, busy and current agree, and an idle actor expects no reply.
        for _where, current, busy, expects in looks:
            assert (current is not None) == busy, looks
            if not busy:
                assert not expects, looks
        assert looks[-1][1:] == (None, False, False)


async def test_a_stop_from_a_handler_mid_batch_leaves_nothing_in_hand_and_loses_nothing() -> None:
    looks: list[tuple[str, Any, bool, bool]] = []
    # temporary: stopped for good, what remains is dead-lettered as `stopped`
    spec = child(Observed, name="o", restart="temporary", kwargs={"looks": looks})
    async with runtime.open_system(Supervisor("app", children=[spec])) as system:
        ref = system.ref("/app/o")
        for n in range(BATCH * 2 + 5):
            ref.tell("stop" if n == BATCH + 3 else n)
        with trio.fail_after(WAIT):
            await wait_for(lambda: any(look[0] == "on_stop" for look in looks))
            await wait_for(lambda: not ref.is_alive)
        [stop_look] = [look for look in looks if look[0] == "on_stop"]
        assert stop_look == ("on_stop", None, False, False)
        counts = system.snapshot().dead_letters
        assert counts["stopped"] == BATCH + 1  # all but the BATCH + 4 handled
        assert sum(counts.values()) == BATCH + 1


async def test_a_stop_from_an_ask_handler_answers_it_and_expects_no_reply_in_on_stop() -> None:
    looks: list[tuple[str, Any, bool, bool]] = []
    spec = child(Observed, name="o", restart="transient", kwargs={"looks": looks})
    async with runtime.open_system(Supervisor("app", children=[spec])) as system:
        with trio.fail_after(WAIT):
            assert await system.ref("/app/o").ask("stop") == "stop"
            await wait_for(lambda: any(look[0] == "on_stop" for look in looks))
        assert [look for look in looks if look[0] == "on_stop"] == [("on_stop", None, False, False)]


async def test_an_injected_crash_mid_batch_accounts_for_every_message() -> None:
    looks: list[tuple[str, Any, bool, bool]] = []
    spec = child(Observed, name="o", kwargs={"looks": looks})
    tree = Supervisor("app", max_restarts=10, children=[spec])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/o")
        async with expect_crashes(count=1):
            for n in range(BATCH + 10):
                ref.tell(n)
            crash(ref)  # system lane: before the user messages
            with trio.fail_after(WAIT):
                await wait_for(lambda: system.snapshot().find("/app/o").restarts == 1)
                await wait_for(lambda: system.snapshot().find("/app/o").processed == BATCH + 10)
        stops = [look for look in looks if look[0] == "on_stop"]
        assert stops == [("on_stop", None, False, False)]
        assert not any(system.snapshot().dead_letters.values())


async def test_a_crashing_ask_fails_its_asker_and_the_next_incarnation_expects_no_reply() -> None:
    looks: list[tuple[str, Any, bool, bool]] = []
    spec = child(Observed, name="o", kwargs={"looks": looks})
    async with runtime.open_system(Supervisor("app", max_restarts=10, children=[spec])) as system:
        ref = system.ref("/app/o")
        with trio.fail_after(WAIT):
            async with expect_crashes(count=1):
                ref.tell("told before")
                try:
                    await ref.ask("boom")
                except ActorCrashed:
                    pass
                else:
                    raise AssertionError("the crash was not reported")
                ref.tell("told after")
                assert await ref.ask("again") == "again"
            looked = len(looks)
            await wait_for(lambda: len(looks) > looked)  # a look at the idle actor
        assert looks[-1][1:] == (None, False, False)
        counts = system.snapshot().dead_letters
        assert counts["crashed"] == 1
        assert sum(counts.values()) == 1


async def test_a_hibernating_actor_around_batches_handles_everything_and_shows_idle(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Count(Actor):
        def __init__(self) -> None:
            self.n = 0

        async def receive(self, msg: Any) -> Any:
            if msg == "yield":
                await trio.sleep(0)
            self.n += 1
            return self.n

    tree = Supervisor("app", children=[child(Count, name="c", hibernate_after=0.5)])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/c")
        total = 0
        with trio.fail_after(WAIT):
            for _ in range(3):
                for n in range(BATCH * 2 + 1):
                    ref.tell("yield" if n % 50 == 0 else n)
                total += BATCH * 2 + 1
                assert await ref.ask("count") == total + 1
                total += 1
                await trio.sleep(1.0)  # hibernates
                info = system.snapshot().find("/app/c")
                assert info.hibernating
                assert (info.current, info.current_for) == (None, None)
                assert not ref.is_busy
        assert system.snapshot().find("/app/c").processed == total


# -- loop health: steps timed from the wake-up ------------------------------------
# The monitor reads `runtime.monitor.perf_counter`; these tests give it a clock that
# jumps by whole minutes where the loop sleeps (every I/O wait) and where a handler
# "blocks", so what is and is not counted as a step is exact, whatever the machine.
SLEEP = MonitorClock.LONG  # what each I/O wait of the loop seems to take
BLOCK = MonitorClock.LONG  # what a blocking handler seems to take

JUMPS: MonitorClock | None = None


class Sleeper(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "sleep":
            assert JUMPS is not None
            JUMPS.jump()  # as if it held the loop for BLOCK seconds
        return msg


@pytest.fixture
def jumps(monkeypatch: pytest.MonkeyPatch) -> MonitorClock:
    global JUMPS
    JUMPS = MonitorClock.patched(monkeypatch)
    return JUMPS


async def test_a_handler_blocking_the_loop_is_named_and_the_loop_sleep_never_counts(
    jumps: MonitorClock,
) -> None:
    tree = Supervisor("app", children=[child(Sleeper, name="sleeper")])
    async with runtime.open_system(tree, blocked_after=SLEEP / 2) as system:
        trio.lowlevel.add_instrument(jumps)
        try:
            async with system.bus.stream("system.loop.blocked") as events:
                with trio.fail_after(WAIT):
                    for _ in range(5):
                        await trio.sleep(0.01)  # the loop sleeps in I/O waits
                    idle = system.snapshot().loop
                    assert await system.ref("/app/sleeper").ask("sleep") == "sleep"
                    event = await events.receive()
                loop = system.snapshot().loop
        finally:
            trio.lowlevel.remove_instrument(jumps)
    assert jumps.waits >= 5
    assert idle.blocked == 0, idle
    assert idle.longest_step < SLEEP / 2
    assert loop.blocked == 1, loop
    assert loop.longest_step >= BLOCK
    assert loop.longest_step_task == "/app/sleeper"
    assert event.payload["task"] == "/app/sleeper"


def test_a_blocking_handler_right_after_a_thread_ask_is_named_not_the_wake_up(
    jumps: MonitorClock,
) -> None:
    # The thread's ask is admitted as the loop wakes up; the blocking step is the
    # actor's, not the run_sync_soon task's that runs in the same batch, and the
    # loop's sleep before the ask is nobody's.
    tree = Supervisor("app", children=[child(Sleeper, name="sleeper")])
    with runtime.start_in_thread(tree, blocked_after=SLEEP / 2) as system:
        system._call(trio.lowlevel.add_instrument, jumps)
        try:
            ref = system.ref("/app/sleeper")
            for _ in range(5):
                time.sleep(0.01)  # the loop sleeps, waiting for I/O
                assert ref.ask_blocking("sleep", timeout=WAIT) == "sleep"
            loop = system.snapshot().loop
        finally:
            system._call(trio.lowlevel.remove_instrument, jumps)
    assert loop.blocked == 5, loop
    assert loop.longest_step_task == "/app/sleeper"
    assert loop.last_blocked is not None and loop.last_blocked.task == "/app/sleeper"


class Forwarder(Actor):
    """Forwards asks to `to`; looks at its own context after forwarding."""

    def __init__(self, looks: list[tuple[str, Any, bool, bool]]) -> None:
        self.looks = looks

    async def receive(self, msg: Any) -> Any:
        ctx = self.ctx
        try:
            await ctx.forward(ctx.system.ref("/app/echo"))
        except runtime.ActorNotFound:
            return "kept"  # nothing was forwarded: the answer is ours again
        self.looks.append(("forwarded", msg, ctx.ref.is_busy, ctx.expects_reply))
        await trio.sleep(0)  # others run while this actor still holds the message
        return "ignored"  # forwarded: the target answers


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        return ("echo", msg)


async def test_a_forwarded_ask_is_answered_by_its_target_and_leaves_no_reply_behind() -> None:
    looks: list[tuple[str, Any, bool, bool]] = []
    tree = Supervisor(
        "app",
        children=[
            child(Echo, name="echo"),
            child(Forwarder, name="fwd", kwargs={"looks": looks}),
        ],
    )
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/fwd")
        with trio.fail_after(WAIT):
            assert await ref.ask(1) == ("echo", 1)
            ref.tell(2)
            assert await ref.ask(3) == ("echo", 3)
            await system.terminate_child("/app/echo")
            assert await ref.ask(4) == "kept"
        assert looks == [
            ("forwarded", 1, True, False),
            ("forwarded", 2, True, False),
            ("forwarded", 3, True, False),
        ]
        assert not any(system.snapshot().dead_letters.values())
