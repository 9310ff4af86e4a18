"""Contracts of the hibernation change that had no test of their own: the mailbox's
sleeper (`MailboxQueue.hibernate` / `forget_sleeper`), the handler check that
`check_handlers` remembers per class, and `check_timeout`'s float fast path."""

from __future__ import annotations

import math
from typing import Any

import pytest

import runtime
from runtime import Actor, Mailbox, Supervisor, child
from runtime.mailbox import EMPTY, MailboxQueue
from runtime.spec import check_timeout


class Sleeper:
    """A consumer with no task: counts its wake-ups."""

    def __init__(self) -> None:
        self.wake_ups = 0

    def wake_up(self) -> None:
        self.wake_ups += 1


def make_mailbox(capacity: int = 4) -> tuple[MailboxQueue, list[tuple[Any, str]]]:
    dropped: list[tuple[Any, str]] = []
    mailbox = MailboxQueue(
        Mailbox(capacity=capacity, overflow="drop_new"), lambda m, r: dropped.append((m, r))
    )
    return mailbox, dropped


@pytest.mark.parametrize("lane", ["put", "put_system", "wake"])
def test_a_sleeper_is_woken_once_by_the_next_put_or_wake(lane: str) -> None:
    mailbox, _ = make_mailbox()
    sleeper = Sleeper()
    mailbox.hibernate(sleeper)
    assert sleeper.wake_ups == 0
    if lane == "wake":
        mailbox.wake()
    else:
        getattr(mailbox, lane)("a")
    assert sleeper.wake_ups == 1
    mailbox.put("b")  # woken once per `hibernate`: no longer registered
    mailbox.wake()
    assert sleeper.wake_ups == 1


def test_a_sleeper_with_mail_queued_already_is_woken_at_once_and_not_kept() -> None:
    mailbox, _ = make_mailbox()
    mailbox.put("a")
    sleeper = Sleeper()
    mailbox.hibernate(sleeper)
    assert sleeper.wake_ups == 1
    mailbox.hibernate(Sleeper())  # nothing was registered: a consumer may come again
    assert mailbox.get() == "a"


def test_a_mailbox_has_exactly_one_consumer_sleeping_or_not() -> None:
    mailbox, _ = make_mailbox()
    mailbox.hibernate(Sleeper())
    with pytest.raises(RuntimeError, match="exactly one consumer"):
        mailbox.hibernate(Sleeper())
    with pytest.raises(RuntimeError, match="exactly one consumer"):
        mailbox.parking()


def test_close_does_not_wake_a_sleeper_and_forget_sleeper_takes_it_back() -> None:
    mailbox, dropped = make_mailbox()
    sleeper = Sleeper()
    mailbox.hibernate(sleeper)
    system, user = mailbox.close()
    assert (system, user) == ([], [])
    assert sleeper.wake_ups == 0  # nothing can arrive any more: its owner ends it
    mailbox.put_system("late")  # dead-lettered by the closed mailbox, no wake-up
    assert sleeper.wake_ups == 0
    assert dropped == [("late", "stopped")]
    mailbox.forget_sleeper()
    mailbox.forget_sleeper()  # nothing registered: a no-op
    mailbox.hibernate(Sleeper())  # the one consumer's place is free again
    assert mailbox.get() is EMPTY


class Plain(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


def test_a_class_whose_handler_is_replaced_after_a_check_is_checked_again() -> None:
    class Patched(Actor):
        async def receive(self, msg: Any) -> Any:
            return msg

    child(Patched)  # checked (and remembered) once

    def receive(self: Any, msg: Any) -> Any:  # a plain def: would block the loop
        return msg

    Patched.receive = receive  # type: ignore[assignment,method-assign]
    with pytest.raises(TypeError, match="receive"):
        child(Patched)


async def test_a_class_patched_between_starts_fails_its_next_start() -> None:
    class Patched(Actor):
        async def receive(self, msg: Any) -> Any:
            return msg

    tree = Supervisor("app", children=[child(Plain, name="p")])
    async with runtime.open_system(tree) as system:
        await system.start_child("/app", child(Patched, name="one"))  # checked and cached

        def receive(self: Any, msg: Any) -> Any:
            return msg

        Patched.receive = receive  # type: ignore[assignment,method-assign]
        with pytest.raises(TypeError, match="receive"):
            await system.start_child("/app", child(Patched, name="two"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [(0.0, 0.0), (1.5, 1.5), (math.inf, math.inf), (None, math.inf), (2, 2.0)],
)
def test_check_timeout_returns_seconds_as_a_float(given: Any, expected: float) -> None:
    got = check_timeout(given)
    assert got == expected and type(got) is float


@pytest.mark.parametrize("bad", [-0.5, -math.inf, math.nan, -1])
def test_check_timeout_refuses_negative_and_nan_floats(bad: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        check_timeout(bad)


@pytest.mark.parametrize("bad", [-0.5, math.nan])
async def test_an_invalid_float_timeout_on_a_ref_queues_nothing(bad: float) -> None:
    tree = Supervisor("app", children=[child(Plain, name="p")])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/p")
        with pytest.raises(ValueError, match="timeout"):
            await ref.ask("x", timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            ref.tell("x", timeout=bad)
        assert system.snapshot().find("/app/p").processed == 0
        assert await ref.ask("y", timeout=math.inf) == "y"
