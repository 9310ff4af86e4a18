"""`runtime.Internal` (an actor's own machinery, e.g. a Daemon's ticks): a subclass
must say what becomes of a dropped one, a `discarded` hook that raises, an ask with
an Internal message, and a full `drop_old` mailbox that never evicts for one."""

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


DISCARDED: list[tuple[str, str]] = []


class Recorded(Internal):
    """Records what the runtime dropped instead of dead-lettering it."""

    def discarded(self, reason: str) -> None:
        DISCARDED.append((type(self).__name__, reason))


class Mine(Recorded):
    """A message that subclasses `Internal`."""


class Boom(Recorded):
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


def test_an_internal_class_without_discarded_is_refused_when_it_is_made() -> None:
    # a user's message class cannot opt out of dead letters without saying where
    # its dropped messages go
    with pytest.raises(TypeError, match=r"Silent subclasses runtime.Internal .* discarded"):

        class Silent(Internal):
            pass


async def test_a_told_internal_message_that_is_dropped_is_told_to_its_class_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    DISCARDED.clear()
    with trio.fail_after(100):
        tree = Supervisor("app", max_restarts=10, children=[child(Plain, name="p")])
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/p")
            ref.tell(Mine())  # unhandled
            ref.tell(Boom())  # crashes the actor
            await trio.testing.wait_all_tasks_blocked()
            info = system.snapshot().find("/app/p")
            assert info.failed == 1 and info.restarts == 1
            assert not any(system.snapshot().dead_letters.values())
    assert DISCARDED == [("Mine", "unhandled"), ("Boom", "crashed")]


class Full(Plain):
    mailbox = runtime.Mailbox(capacity=1, overflow="drop_old")


async def test_an_internal_message_never_pushes_a_message_out_of_a_full_drop_old_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    DISCARDED.clear()
    with trio.fail_after(100):
        tree = Supervisor("app", children=[child(Full, name="p")])
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/p")
            ref.tell(("work", 1.0))  # in hand
            await trio.testing.wait_all_tasks_blocked()
            asked = ref.ask(("work", 0))  # queued: the mailbox is full
            async with trio.open_nursery() as nursery:
                answers: list[Any] = []

                async def ask() -> None:
                    answers.append(await asked)

                nursery.start_soon(ask)
                await trio.testing.wait_all_tasks_blocked()
                ref.tell(Mine())  # discarded, not the queued ask
            assert answers == ["done"]
            assert not any(system.snapshot().dead_letters.values())
    assert DISCARDED == [("Mine", "overflow")]
