"""Reply waits keep their deadlines in their system's `runtime.deadlines` (no cancel scope
per ask): timeouts fire on time whatever order they come in, ended waits leave nothing
behind, a reply that comes after the asker was cancelled is late, and a wait outlives the
keeper of its deadline without losing it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from test_chaos import all_tasks

import runtime
from runtime import Actor, Supervisor, child
from runtime.deadlines import PRUNE_AT, Deadlines
from runtime.messages import Reply


class Holder(Actor):
    """Answers ``"hold"`` never (the reply is deferred and kept), anything else at once."""

    async def receive(self, msg: Any) -> Any:
        if msg == "hold":
            self.held = self.ctx.defer_reply()
            return None
        return msg


def tree() -> Supervisor:
    return Supervisor("app", children=[child(Holder, name="holder")])


@asynccontextmanager
async def keeper() -> AsyncIterator[tuple[Deadlines, trio.CancelScope]]:
    """A `Deadlines` whose keeper runs in this block (cancel the scope to stop it)."""
    deadlines = Deadlines()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        await trio.testing.wait_all_tasks_blocked()
        assert deadlines.running
        yield deadlines, nursery.cancel_scope
        nursery.cancel_scope.cancel()


async def test_a_short_ask_times_out_at_its_deadline_behind_a_longer_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        async with runtime.open_system(tree()) as system:
            ref = system.ref("/app/holder")
            outcomes: list[tuple[str, float]] = []

            async def ask(timeout: float) -> None:
                start = trio.current_time()
                with pytest.raises(runtime.AskTimeout):
                    await ref.ask("hold", timeout=timeout)
                outcomes.append((f"{timeout:g}", trio.current_time() - start))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, 100.0)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(ask, 1.0)  # earlier than the deadline the keeper sleeps to
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(ask, 10.0)
            assert [name for name, _ in outcomes] == ["1", "10", "100"]
            for name, waited in outcomes:
                assert waited == pytest.approx(float(name))


async def test_asks_that_end_leave_no_deadline_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(tree()) as system:
            ref = system.ref("/app/holder")
            for i in range(10 * PRUNE_AT):
                assert await ref.ask(i, timeout=30) == i
            kept = system.deadlines
            assert kept.running
            assert kept.waiting == 0
            assert kept.held <= 2 * PRUNE_AT + 2
            with trio.move_on_after(1):  # cancelled waits end too
                await ref.ask("hold", timeout=30)
            assert kept.waiting == 0


async def test_an_ask_with_a_timeout_of_zero_gives_up_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(tree()) as system:
            ref = system.ref("/app/holder")
            assert system.deadlines.running
            for i in range(3):
                with pytest.raises(runtime.AskTimeout):
                    await ref.ask(i, timeout=0)
            assert await ref.ask("flush", timeout=10) == "flush"
            assert sorted(d.message for d in system.dead_letters.recent(10, "timeout")) == [0, 1, 2]


async def test_a_stopped_system_leaves_no_keeper_behind() -> None:
    before = all_tasks()
    with trio.fail_after(30):
        async with runtime.open_system(tree()) as system:
            assert await system.ref("/app/holder").ask("x", timeout=10) == "x"
    assert not system.deadlines.running
    assert [task.name for task in all_tasks() - before] == []


async def test_a_wait_outlives_the_keeper_of_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    late: list[Any] = []
    answered = Reply(late.append)
    timed_out = Reply(late.append)
    results: list[Any] = []

    async def wait(reply: Reply, deadlines: Deadlines) -> None:
        try:
            results.append(await reply.wait(trio.current_time() + 10, "x", deadlines))
        except runtime.AskTimeout:
            results.append(("timeout", trio.current_time()))

    start = trio.current_time()
    with trio.fail_after(60):
        async with trio.open_nursery() as waiters:
            async with keeper() as (deadlines, stop):
                waiters.start_soon(wait, answered, deadlines)
                waiters.start_soon(wait, timed_out, deadlines)
                await trio.testing.wait_all_tasks_blocked()
                assert deadlines.waiting == 2
                stop.cancel()
            assert not deadlines.running
            await trio.sleep(1)
            answered.send("answer")  # still waited for, on its own deadline now
    assert results == ["answer", ("timeout", start + 10)]
    assert timed_out.state == "abandoned"
    assert late == []


async def test_without_a_running_keeper_a_cancel_scope_keeps_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reply = Reply(lambda _: None)
    start = trio.current_time()
    with trio.fail_after(60), pytest.raises(runtime.AskTimeout):
        await reply.wait(start + 3, "x", Deadlines())  # never started
    assert trio.current_time() - start == pytest.approx(3)


async def test_a_reply_between_the_cancel_and_the_asker_running_is_late() -> None:
    late: list[Any] = []
    reply = Reply(late.append)
    scope = trio.CancelScope()
    raised: list[BaseException] = []

    async with keeper() as (deadlines, _):  # (bounded below)

        async def asker() -> None:
            with scope:
                try:
                    await reply.wait(trio.current_time() + 30, "test", deadlines)
                except BaseException as exc:
                    raised.append(exc)
                    raise

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()  # the asker is not running yet ...
                assert reply.send("answer") is False  # ... but it gave up: the answer is late
        assert deadlines.waiting == 0
    assert late == ["answer"]
    assert reply.state == "abandoned"
    assert [type(exc) for exc in raised] == [trio.Cancelled]


async def test_reply_wait_times_out_then_a_late_answer_goes_to_on_late(
    autojump_clock: trio.testing.MockClock,
) -> None:
    late: list[Any] = []
    reply = Reply(late.append)
    with trio.fail_after(60):
        async with keeper() as (deadlines, _):
            start = trio.current_time()
            with pytest.raises(runtime.AskTimeout, match="no reply to the thing"):
                await reply.wait(start + 5, lambda: "the thing", deadlines)
            assert trio.current_time() - start == pytest.approx(5)
    assert reply.send("too late") is False
    assert late == ["too late"]


async def test_a_settled_reply_is_still_a_checkpoint() -> None:
    reply = Reply(lambda _: None)
    reply.send(42)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await reply.wait(math.inf, "x")
    assert await reply.wait(trio.current_time() + 1, "x") == 42


async def test_deadlines_expire_in_deadline_order(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[tuple[str, float]] = []

    class Waiter:
        def __init__(self, name: str) -> None:
            self.name = name

        def expire(self) -> None:
            fired.append((self.name, trio.current_time()))

        def unkept(self) -> None:
            fired.append((f"{self.name} unkept", trio.current_time()))

    start = trio.current_time()
    with trio.fail_after(60):
        async with keeper() as (kept, _):
            kept.add(start + 3, Waiter("c"))
            dropped = kept.add(start + 1, Waiter("never"))
            kept.add(start + 2, Waiter("b"))
            kept.add(start + 2, Waiter("b2"))  # a tie: first come, first expired
            kept.add(start + 0.5, Waiter("a"))
            kept.add(start + 50, Waiter("d"))
            kept.discard(dropped)
            kept.discard(dropped)  # twice is harmless
            await trio.sleep(10)
            assert kept.waiting == 1
        assert [(name, at - start) for name, at in fired] == [
            ("a", 0.5),
            ("b", 2),
            ("b2", 2),
            ("c", 3),
            ("d unkept", 10),
        ]
        assert kept.waiting == 0
        with pytest.raises(RuntimeError, match="kept once"):
            await kept.run()
