"""Attacks on a resting `transient` child (one that stopped normally and keeps its
place with its mailbox closed, see `Cell.rest`): what others see while it rests.

Every test runs on trio's autojump clock; none asserts on a duration.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from test_control import WAIT, Conn
from test_otp_semantics import settle, w

from runtime import Actor, ActorStopped, Backoff, Supervisor, child, open_system
from runtime.testing import crash, wait_for


class AsksOnStart(Actor):
    """Asks ``/app/t`` in its `on_start` (once `out["ask"]` is set) and notes what came
    back, or the error's class name, in `out["answer"]`; "crash" crashes it."""

    def __init__(self, out: dict[str, Any]) -> None:
        self.out = out

    async def on_start(self) -> None:
        if self.out.get("ask"):
            try:
                self.out["answer"] = await self.ctx.system.ref("/app/t").ask("ping", timeout=None)
            except Exception as exc:
                self.out["answer"] = type(exc).__name__

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("crash on purpose")
        return msg


async def test_an_on_start_that_asks_a_resting_sibling_gets_actor_stopped_not_deadlock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A resting slot starts no more when its supervisor is done starting another
    child: an ask to it fails at once with `ActorStopped`.  Rule 5 must not count it
    as waiting for that start (a cycle: `Deadlock`), neither for a sibling restarted
    by rest_for_one nor for a dynamic child."""
    log: list[Any] = []
    out: dict[str, Any] = {}
    tree = Supervisor(
        "app",
        strategy="rest_for_one",
        children=[w("t", log, restart="transient"), child(AsksOnStart, name="b", args=(out,))],
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            assert await system.ref("/app/t").ask("stop") == "stopping"
            await settle()
            out["ask"] = True
            system.ref("/app/b").tell("crash")  # b restarts; t (before it) rests on
            await settle()
            assert out.pop("answer") == "ActorStopped"
            await system.start_child("/app", child(AsksOnStart, name="d", args=(out,)))
            assert out.pop("answer") == "ActorStopped"


def resting_behind_a_backoff(log: list[Any]) -> Supervisor:
    """``/app/t`` is transient; a crash of ``/app/a`` restarts both after 30 s."""
    return Supervisor(
        "app",
        strategy="one_for_all",
        backoff=Backoff(min=30.0, max=30.0, jitter=0.0),
        children=[w("a", log), w("t", log, restart="transient")],
    )


async def test_crash_refuses_a_resting_child_also_while_its_group_restart_is_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its closed mailbox would drop the crash without a word (`crash` said nothing and
    the next incarnation did not crash); `crash` says there is nothing to crash."""
    log: list[Any] = []
    with trio.fail_after(120):
        async with open_system(resting_behind_a_backoff(log)) as system:
            t = system.ref("/app/t")
            assert await t.ask("stop") == "stopping"
            await settle()
            with pytest.raises(ActorStopped):
                crash(t)
            system.ref("/app/a").tell("crash")
            await settle()
            assert [c.state for c in system.which_children("/app")] == ["restarting"] * 2
            with pytest.raises(ActorStopped):
                crash(t)  # it rests until the restart starts it
            await trio.sleep(31)
            assert await t.ask("ping") == "pong"  # the new incarnation did not crash
            assert t.is_alive


async def test_troupe_kill_refuses_a_resting_child_also_while_its_group_restart_is_pending(
    folder: Any,
) -> None:
    """The control socket answered "killed" and the crash was dropped by the closed
    mailbox.  (Real clock: the socket; nothing waits for the 30 s backoff.)"""
    log: list[Any] = []
    with trio.fail_after(WAIT):
        async with open_system(
            resting_behind_a_backoff(log), control=True, control_dir=folder
        ) as system:
            assert await system.ref("/app/t").ask("stop") == "stopping"
            await wait_for(lambda: not system.ref("/app/t").is_alive, timeout=WAIT)
            system.ref("/app/a").tell("crash")
            await wait_for(
                lambda: system.which_children("/app")[0].state == "restarting", timeout=WAIT
            )
            conn = await Conn.open(system)
            try:
                reply = await conn.request("kill", path="/app/t")
            finally:
                await conn.stream.aclose()
            assert not reply["ok"], reply
            assert reply["type"] == "ActorStopped", reply
