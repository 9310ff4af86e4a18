"""The testkit users get: the `system` and `probe` fixtures, TestProbe, crash()."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import runtime
from runtime import Actor, child
from runtime.testing import ANY, TestProbe, crash, wait_for


class Greeter(Actor):
    def __init__(self, reply_to: runtime.ActorRef | None = None) -> None:
        self.reply_to = reply_to

    async def on_start(self) -> None:
        if self.reply_to is not None:
            self.reply_to.tell("started")

    async def receive(self, msg: Any) -> Any:
        if self.reply_to is not None:
            self.reply_to.tell(f"hello {msg}")
        return f"hi {msg}"


async def test_probe_receives_what_an_actor_sends(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    ref = await system.start_child("/test", child(Greeter, name="g", args=(probe.ref,)))
    await probe.expect_message("started")
    ref.tell("ann")
    assert await probe.expect_message(str) == "hello ann"
    await probe.expect_no_message(within=1.0)


async def test_expectations_fail_with_a_clear_message(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    probe.ref.tell("surprise")
    with pytest.raises(AssertionError, match="expected 'other', got 'surprise'"):
        await probe.expect_message("other")
    with pytest.raises(AssertionError, match="no message within"):
        await probe.expect_message(timeout=5.0)
    probe.ref.tell(1)
    with pytest.raises(AssertionError, match="expected no message, got 1"):
        await probe.expect_no_message(within=1.0)


async def test_crash_on_purpose_restarts_and_probe_sees_terminated(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    ref = await system.start_child(
        "/test", child(Greeter, name="g", args=(probe.ref,), restart="transient")
    )
    await probe.expect_message("started")
    crash(ref, ValueError("on purpose"))
    await probe.expect_message("started")  # restarted after the crash
    info = system.snapshot().find("/test/g")
    assert info.restarts == 1 and info.last_error is not None
    assert info.last_error.type == "ValueError"
    probe.watch(ref)
    await system.terminate_child("/test/g")
    terminated = await probe.expect_terminated(ref)
    assert terminated.reason == "shutdown"


async def test_probe_expects_bus_events_and_answers_asks(
    system: runtime.System, autojump_clock: trio.testing.MockClock
) -> None:
    probe = await TestProbe.start(system, "/test", name="listener", answer=lambda m: m * 2)
    probe.subscribe("orders.*")
    system.publish("orders.new", {"id": 7})
    event = await probe.expect_event("orders.>", payload={"id": 7})
    assert event.topic == "orders.new"
    assert await probe.ref.ask(21) == 42
    await probe.expect_message(21)
    with pytest.raises(AssertionError, match="expected an event"):
        probe.ref.tell("not an event")
        await probe.expect_event("orders.*")


async def test_wait_for_polls_until_true(
    system: runtime.System, autojump_clock: trio.testing.MockClock
) -> None:
    ref = await system.start_child("/test", child(Greeter, name="g"))
    for _ in range(3):
        ref.tell("x")
    await wait_for(lambda: system.snapshot().find("/test/g").processed == 3)
    with pytest.raises(AssertionError, match="condition not met"):
        await wait_for(lambda: False, timeout=2.0)


async def test_expect_terminated_without_watch_fails_at_once_saying_to_watch(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    ref = await system.start_child("/test", child(Greeter, name="g"))
    await system.terminate_child("/test/g")  # the Terminated it could have had never comes
    with trio.fail_after(1.0), pytest.raises(RuntimeError, match=r"probe\.watch\(ref\) first"):
        await probe.expect_terminated(ref, timeout=60.0)  # not a 60 s wait for nothing
    probe.watch(ref)  # watching what has stopped delivers Terminated at once
    assert (await probe.expect_terminated(ref)).reason == "shutdown"


async def test_expect_message_none_means_the_message_none_and_any_means_anything(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    probe.ref.tell("something")
    with pytest.raises(AssertionError, match="expected None, got 'something'"):
        await probe.expect_message(None)
    probe.ref.tell(None)
    assert await probe.expect_message(None) is None
    probe.ref.tell(0)
    assert await probe.expect_message(ANY) == 0
    probe.ref.tell(None)
    assert await probe.expect_message() is None  # the default is ANY
    # ANY also stands for any value inside an expected one
    probe.ref.tell(("work", 3))
    assert await probe.expect_message(("work", ANY)) == ("work", 3)
    probe.ref.tell(("rest", 3))
    with pytest.raises(AssertionError, match=r"expected \('work', ANY\), got \('rest', 3\)"):
        await probe.expect_message(("work", ANY))
    with pytest.raises(AssertionError, match="no message within"):
        await probe.expect_message(ANY, timeout=1.0)  # ANY still needs a message


async def test_expect_event_payload_none_means_the_payload_none(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    probe.subscribe("jobs.*")
    system.publish("jobs.a", {"id": 1})
    with pytest.raises(AssertionError, match=r"expected payload None, got \{'id': 1\}"):
        await probe.expect_event("jobs.*", payload=None)
    system.publish("jobs.b")  # no payload: None
    assert (await probe.expect_event("jobs.*", payload=None)).topic == "jobs.b"
    system.publish("jobs.c", {"id": 3, "at": 12.5})
    await probe.expect_event("jobs.*", payload={"id": 3, "at": ANY})
    system.publish("jobs.d", 4)
    assert (await probe.expect_event("jobs.*")).payload == 4  # the default is ANY


class SlowStart(Actor):
    """Takes two seconds to start, then says so."""

    def __init__(self, reply_to: runtime.ActorRef) -> None:
        self.reply_to = reply_to

    async def on_start(self) -> None:
        await trio.sleep(2.0)
        self.reply_to.tell("started")


async def test_crash_while_restarting_or_starting_crashes_the_next_incarnation_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = runtime.Supervisor(
        "app", max_restarts=10, within=60.0, backoff=runtime.Backoff(min=1.0, max=1.0, jitter=0)
    )
    with trio.fail_after(100.0):
        async with runtime.open_system(tree) as system:
            probe = await TestProbe.start(system, "/app")
            ref = await system.start_child("/app", child(SlowStart, name="s", args=(probe.ref,)))
            await probe.expect_message("started")

            def info() -> runtime.ActorInfo:
                return system.snapshot().find("/app/s")

            def last_error() -> str | None:
                error = info().last_error
                return None if error is None else error.message

            crash(ref, ValueError("first"))
            await wait_for(lambda: info().state == "restarting")  # the 1 s backoff
            crash(ref, ValueError("while restarting"))
            await wait_for(lambda: info().state == "starting")  # the next one's on_start
            crash(ref, ValueError("while starting"))
            # each crash is one crash: the incarnation that starts next starts (its
            # on_start runs to the end) and then crashes at once, before any message
            await probe.expect_message("started", timeout=10.0)
            await wait_for(lambda: last_error() == "while restarting")
            await probe.expect_message("started", timeout=10.0)
            await wait_for(lambda: last_error() == "while starting")
            await probe.expect_message("started", timeout=10.0)
            await probe.expect_no_message(within=10.0)  # and no more
            assert info().state == "running" and info().restarts == 3 and info().failed == 3


async def test_crash_refuses_a_supervisor_a_stopped_actor_and_other_threads(
    system: runtime.System, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(TypeError, match=r"/test is a supervisor.*crash one of its children"):
        crash(system.ref("/test"))
    ref = await system.start_child("/test", child(Greeter, name="g"))
    with pytest.raises(RuntimeError, match="trio thread only"):
        await trio.to_thread.run_sync(crash, ref)  # it would touch the mailbox off the loop
    await system.terminate_child("/test/g")
    with pytest.raises(runtime.ActorNotFound, match="has stopped"):
        crash(ref)
    assert system.snapshot().find("/test").restarts == 0


class Quits(runtime.Actor):
    """Stops itself (normally) on "stop"; records its starts."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append(self.ctx.name)

    async def receive(self, msg: object) -> object:
        if msg == "stop":
            self.ctx.stop()
        return None


async def test_crash_refuses_a_transient_child_that_ended_normally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No incarnation is coming: a crash parked for a later group restart would
    surprise (it used to cost a second restart there)."""
    log: list[str] = []
    tree = runtime.Supervisor(
        "app",
        strategy="one_for_all",
        max_restarts=1,
        within=60,
        children=[
            runtime.child(Quits, name="t", args=(log,), restart="transient"),
            runtime.child(Quits, name="p", args=(log,)),
        ],
    )
    with trio.fail_after(100):
        async with runtime.open_system(tree) as system:
            t, p = system.ref("/app/t"), system.ref("/app/p")
            t.tell("stop")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(runtime.ActorStopped, match="not restarting"):
                crash(t)
            crash(p)  # one crash: one group restart
            await trio.sleep(1)
            snap = system.snapshot()
            assert snap.find("/app").restarts == 0
            assert snap.find("/app/p").restarts == 1
            assert log == ["t", "p", "t", "p"]
