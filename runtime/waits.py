"""The wait-for graph of design rule 5: who waits on whom, and refusing cycles.

Waits between local actors made by a handler (`receive`, `on_start`,
`on_stop`) run on the loop thread in the incarnation's own task, so the
runtime knows them: a slot waits for room in another's mailbox (`send`,
`publish`) or for another's reply (`ask`).  Each slot has at most one such
wait at a time (a handler awaits one thing), so the graph is a set of chains
and a cycle check walks one chain.  Nothing here runs on the path of a send
that has room.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from .errors import Deadlock
from .mailbox import MailboxQueue

MAX_CHAIN = 100_000
"""A bound on walking a chain (the graph has no cycles; this only guards bugs)."""


class Waiter(Protocol):
    """A slot as the graph sees it."""

    path: str
    mailbox: MailboxQueue
    waiting_for: Any  # another Waiter, or None
    waiting_to_send: bool  # the wait is for room (not for a reply)
    task: trio.lowlevel.Task | None  # the running incarnation's own task

    @property
    def start_wait(self) -> Any:
        """The slot whose start this one waits for, or None: a supervisor busy starting
        a child waits for it, and a slot with no incarnation whose supervisor is busy
        starting another child cannot start (nor answer) before that one has."""
        ...


_slots: dict[trio.lowlevel.Task, Any] = {}
"""The slot of each running incarnation, by its task.  Shared by the systems of a
process (tasks are unique); each loop thread touches only the entries of its own
tasks, one dict operation at a time."""


def enter_incarnation(slot: Waiter) -> None:
    """Called at the start of an incarnation's task: handlers here are `slot`'s."""
    task = trio.lowlevel.current_task()
    slot.task = task
    slot.waiting_for = None
    slot.waiting_to_send = False
    _slots[task] = slot


def leave_incarnation(slot: Waiter) -> None:
    """The incarnation's task is ending: it waits on nothing any more."""
    if slot.task is not None:
        _slots.pop(slot.task, None)
    slot.task = None
    slot.waiting_for = None
    slot.waiting_to_send = False


def waiting_slot() -> Any:
    """The slot whose handler runs in this task, or None.

    None in any other task: a plain trio task, a ``ctx.nursery`` task, a thread.
    """
    return _slots.get(trio.lowlevel.current_task())


def check_wait(waiter: Waiter, target: Waiter, what: str) -> None:
    """Raise `Deadlock` if `waiter` waiting on `target` would close a cycle.  Records nothing.

    The chain follows each slot's wait, and where it has none, the start it waits
    for (`Waiter.start_wait`): e.g. an `on_start` that asks a sibling started after
    it waits on a slot that waits for that very start.
    """
    path = [waiter.path, target.path]
    node: Any = target
    for _ in range(MAX_CHAIN):
        if node is waiter:
            raise Deadlock(path, what)
        following = node.waiting_for
        if following is None:
            following = node.start_wait
            if following is None:
                break
        node = following
        path.append(node.path)


def begin_wait(waiter: Waiter, target: Waiter, what: str, *, to_send: bool = False) -> None:
    """`waiter` is about to wait on `target`: raise `Deadlock` if that closes a cycle.

    Otherwise record the edge; `end_wait` removes it.  `to_send`: the wait is
    for room in `target`'s mailbox only (it ends when the mailbox lets the
    waiter's message in, `let_in`); otherwise it lasts until `target` answers.
    """
    check_wait(waiter, target, what)
    waiter.waiting_for = target
    waiter.waiting_to_send = to_send


def let_in(task: trio.lowlevel.Task, mailbox: MailboxQueue) -> None:
    """`mailbox` let the message of `task` in: if that task waited for room there,
    its wait is over already, though the task has not run yet.  Not an edge any more.

    (A publisher holds places in several lines and waits on one at a time: a
    message let in elsewhere does not end its current wait.)
    """
    slot = _slots.get(task)
    if slot is not None and slot.waiting_to_send and slot.waiting_for.mailbox is mailbox:
        slot.waiting_for = None
        slot.waiting_to_send = False


def end_wait(waiter: Waiter, target: Waiter) -> None:
    """The wait of `waiter` on `target` is over (or no longer an edge: `defer_reply`)."""
    if waiter.waiting_for is target:
        waiter.waiting_for = None
        waiter.waiting_to_send = False


def end_ask(waiter: Waiter) -> None:
    """The ask `waiter` waits in is over (answered, or given up), whoever it waits on
    by now: `hand_on` may have moved the edge since it began."""
    waiter.waiting_for = None
    waiter.waiting_to_send = False


def hand_on(waiter: Waiter, holder: Waiter, target: Waiter, what: str) -> None:
    """`holder` passes the ask `waiter` waits on to `target` (``ctx.forward``): from
    now `waiter` waits for `target`'s answer.  Raises `Deadlock` if that closes a
    cycle (nothing changes then)."""
    check_wait(waiter, target, what)
    if waiter.waiting_for is holder:
        waiter.waiting_for = target
        waiter.waiting_to_send = False


def hand_back(waiter: Waiter, target: Waiter, holder: Waiter) -> None:
    """`hand_on` undone: the forward to `target` failed, `holder` keeps the ask."""
    if waiter.waiting_for is target:
        waiter.waiting_for = holder


__all__ = [
    "begin_wait",
    "check_wait",
    "end_ask",
    "end_wait",
    "enter_incarnation",
    "hand_back",
    "hand_on",
    "leave_incarnation",
    "let_in",
    "waiting_slot",
]
