"""`runtime.Internal` (an actor's own machinery, e.g. a Daemon's ticks): a `discarded`
hook that raises, and an ask with an Internal message."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, Internal, Supervisor, child


class Plain(Actor):
    """Handles ``("work", seconds)``; anything else is unhandled; "boom" crashes it."""

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, tuple) and msg[0] == "work":
            await trio.sleep(msg[1])
            return "done"
        if isinstance(msg, Boom):
            raise RuntimeError("boom")
        return runtime.UNHANDLED


class Mine(Internal):
    """A message that subclasses `Internal`."""


class Boom(Internal):
    pass


class RaisingHook(Internal):
    def discarded(self, reason: str) -> None:
        raise RuntimeError("discarded() raised")


async def test_a_discarded_hook_that_raises_does_not_leave_the_rest_of_the_mailbox_hanging(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A raising hook is logged; the rest of the closed mailbox is still accounted for
    # (it used to abort the finalize, leaving the ask behind it unanswered).
    answers: list[Any] = []
    with trio.fail_after(100):
        async with runtime.open_system(Supervisor("app")) as system:
            ref = await system.start_child("/app", child(Plain, name="p", shutdown=1.0))
            ref.tell(("work", 10.0))
            ref.tell(RaisingHook())

            async def ask() -> None:
                try:
                    answers.append(await ref.ask(("work", 0), timeout=None))
                except runtime.TroupeError as error:
                    answers.append(error)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await trio.sleep(1)
                try:
                    await system.terminate_child("/app/p")
                    raised = None
                except RuntimeError as error:
                    raised = error
                await trio.sleep(1)
                nursery.cancel_scope.cancel()
    assert (raised, len(answers)) == (None, 1), (raised, answers)
    assert isinstance(answers[0], runtime.ActorStopped)


async def test_an_internal_message_asked_is_accounted_like_any_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        tree = Supervisor("app", max_restarts=10, children=[child(Plain, name="p")])
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/p")
            with pytest.raises(runtime.UnhandledMessage):
                await ref.ask(Mine())
            with pytest.raises(runtime.ActorCrashed):
                await ref.ask(Boom())
            dead = {k: v for k, v in system.snapshot().dead_letters.items() if v}
            assert dead == {"unhandled": 1, "crashed": 1}
