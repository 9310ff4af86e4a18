"""Attacks on a resting `transient` child (one that stopped normally and keeps its
place with its mailbox closed, see `Cell.rest`): what others see while it rests.

Every test runs on trio's autojump clock; none asserts on a duration.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from test_otp_semantics import settle, w

from runtime import Actor, Supervisor, child, open_system


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
