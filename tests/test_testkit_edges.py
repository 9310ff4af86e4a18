"""Edges of `runtime.testing`: `crash()` on an actor with no incarnation to come, and
`ANY` inside structures."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, Supervisor, child
from runtime.testing import ANY, TestProbe, crash


class Noted(Actor):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append(self.ctx.name)

    async def receive(self, msg: Any) -> Any:
        if msg == "stop":
            self.ctx.stop()


async def test_crash_on_a_transient_child_that_exited_normally_is_refused_not_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # crash() on a transient child that ended normally (its slot kept, no incarnation
    # coming) raises `ActorStopped` instead of parking the crash for a later group
    # restart: a sibling's one crash is then one restart, and the supervisor does not give up.
    log: list[str] = []
    tree = Supervisor(
        "app",
        strategy="one_for_all",
        max_restarts=1,
        within=60,
        children=[
            child(Noted, name="t", args=(log,), restart="transient"),
            child(Noted, name="p", args=(log,)),
        ],
    )
    with trio.fail_after(1_000):
        async with runtime.open_system(tree) as system:
            t, p = system.ref("/app/t"), system.ref("/app/p")
            t.tell("stop")
            await trio.testing.wait_all_tasks_blocked()
            assert system.snapshot().find("/app/t").state == "stopped"
            with pytest.raises(runtime.ActorStopped, match="not restarting"):
                crash(t)  # refused, not parked for a later group restart
            await trio.sleep(100)
            crash(p)  # one crash: one group restart
            await trio.sleep(1)
            snap = system.snapshot()
            assert snap.find("/app").restarts == 0
            assert snap.find("/app/p").restarts == 1
            assert log == ["t", "p", "t", "p"]


def test_any_refuses_to_stand_in_a_set_or_as_a_dict_key() -> None:
    # Sets and dict keys match by hash, so ANY cannot stand for a value there:
    # hashing it raises `TypeError` at once, pointing to a predicate instead.
    with pytest.raises(TypeError, match=r"set or used as a dict key.*function"):
        _ = {ANY}
    with pytest.raises(TypeError, match="set or used as a dict key"):
        _ = {ANY: 1}


async def test_any_nested_in_events_and_values(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    # ANY stands for one part of a value, in event payloads (dict values, list items)
    # and in messages (tuple items, nan included); `None` and values still match exactly.
    probe.subscribe("jobs.*")
    system.publish("jobs.a", {"id": 1, "tags": ["x", 2.5], "at": None})
    await probe.expect_event("jobs.*", payload={"id": 1, "tags": [ANY, 2.5], "at": ANY})
    probe.ref.tell(("work", float("nan")))
    await probe.expect_message(("work", ANY))
    probe.ref.tell(None)
    with pytest.raises(AssertionError):
        await probe.expect_message(("work", ANY))  # None is not a ("work", _)
    probe.ref.tell(3)
    with pytest.raises(AssertionError):
        await probe.expect_message(None)


async def test_crash_refuses_what_has_stopped_for_good(
    system: runtime.System, autojump_clock: trio.testing.MockClock
) -> None:
    # crash() on an actor that has stopped for good raises `ActorNotFound`.
    log: list[str] = []
    ref = await system.start_child("/test", child(Noted, name="n", args=(log,)))
    await system.terminate_child("/test/n")
    with pytest.raises(runtime.ActorNotFound):
        crash(ref)
