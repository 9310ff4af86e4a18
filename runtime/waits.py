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

from contextvars import ContextVar
from typing import Any, Protocol

import trio

from .errors import Deadlock

MAX_CHAIN = 100_000
"""A bound on walking a chain (the graph has no cycles; this only guards bugs)."""


class Waiter(Protocol):
    """A slot as the graph sees it."""

    path: str
    waiting_for: Any  # another Waiter, or None
    task: trio.lowlevel.Task | None  # the running incarnation's own task


_current: ContextVar[Any] = ContextVar("troupe_current_slot", default=None)


def enter_incarnation(slot: Waiter) -> None:
    """Called at the start of an incarnation's task: handlers here are `slot`'s."""
    slot.task = trio.lowlevel.current_task()
    slot.waiting_for = None
    _current.set(slot)


def waiting_slot() -> Any:
    """The slot whose handler runs in this task, or None.

    None in any other task: a plain trio task, a ``ctx.nursery`` task (they
    inherit the context but are not the incarnation's task), a thread.
    """
    slot = _current.get()
    if slot is not None and slot.task is trio.lowlevel.current_task():
        return slot
    return None


def begin_wait(waiter: Waiter, target: Waiter, what: str) -> None:
    """`waiter` is about to wait on `target`: raise `Deadlock` if that closes a cycle.

    Otherwise record the edge; `end_wait` removes it.
    """
    path = [waiter.path, target.path]
    node: Any = target
    for _ in range(MAX_CHAIN):
        if node is waiter:
            raise Deadlock(path, what)
        node = node.waiting_for
        if node is None:
            break
        path.append(node.path)
    waiter.waiting_for = target


def end_wait(waiter: Waiter, target: Waiter) -> None:
    """The wait of `waiter` on `target` is over (or no longer an edge: `defer_reply`)."""
    if waiter.waiting_for is target:
        waiter.waiting_for = None


__all__ = ["begin_wait", "end_wait", "enter_incarnation", "waiting_slot"]
