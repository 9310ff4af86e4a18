"""Deadlines of reply waits: one system task per trio run wakes the waits that time out.

An ask waits for its reply with a deadline.  A `trio.CancelScope` with a
deadline costs more to enter and leave than the rest of an ask round trip, so
a reply wait does not make one: it registers its deadline here (a push on a
heap) and takes it off again when it ends (a flag, pruned in bulk).  One
system task, started by the first wait of the run, sleeps until the earliest
deadline and calls `expire()` on the waits still registered when it passes.

Loop thread only.  Layer 0: knows nothing of replies beyond `Expiring`.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any, Protocol

import trio

PRUNE_AT = 64
"""Ended waits left on the heap before it is pruned (only when they are also half of it)."""


class Expiring(Protocol):
    """What registers a deadline: told once, on the loop thread, when it passes."""

    def expire(self) -> None:
        """The deadline passed and the wait is still registered.  Must not raise."""
        ...


Entry = list[Any]
"""``[deadline, number, waiter]``; the waiter is None once the wait ended."""


class Deadlines:
    """The deadlines of one trio run's reply waits, and the task that keeps them."""

    __slots__ = ("_dead", "_heap", "_numbers", "_scope", "_wake_at")

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._numbers = itertools.count()  # ties on the deadline: first come, first expired
        self._dead = 0  # entries on the heap whose wait ended
        self._wake_at = math.inf  # when the task wakes next
        self._scope: trio.CancelScope | None = None  # the task's sleep, while it sleeps

    def add(self, deadline: float, waiter: Expiring) -> Entry:
        """Call ``waiter.expire()`` at `deadline` (a `trio.current_time` time) unless
        `discard` is called first.  Never blocks."""
        entry = [deadline, next(self._numbers), waiter]
        heapq.heappush(self._heap, entry)
        if deadline < self._wake_at:  # rare once waits run: later asks end later
            self._wake_at = deadline
            if self._scope is not None:
                self._scope.deadline = deadline
        return entry

    def discard(self, entry: Entry) -> None:
        """The wait ended before its deadline: it is not expired.  Never blocks."""
        if entry[2] is None:
            return
        entry[2] = None
        self._dead += 1
        if self._dead > PRUNE_AT and self._dead * 2 > len(self._heap):
            heap = self._heap
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
            self._dead = 0

    @property
    def waiting(self) -> int:
        """Waits registered now (for tests and statistics)."""
        return len(self._heap) - self._dead

    @property
    def held(self) -> int:
        """Entries on the heap, ended waits not pruned yet included (at most about
        twice `waiting`, or `PRUNE_AT`)."""
        return len(self._heap)

    async def run(self) -> None:
        """The system task: sleep until the earliest deadline, expire what is due, repeat."""
        heap = self._heap
        while True:
            with trio.CancelScope(deadline=self._wake_at) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            while heap and (heap[0][2] is None or heap[0][0] <= now):
                entry = heapq.heappop(heap)
                waiter = entry[2]
                if waiter is None:
                    self._dead -= 1
                else:
                    entry[2] = None
                    waiter.expire()
            self._wake_at = heap[0][0] if heap else math.inf


_RUN: trio.lowlevel.RunVar[Deadlines] = trio.lowlevel.RunVar("troupe.deadlines")


def current() -> Deadlines | None:
    """This trio run's deadlines, its task started on first use; None once the run is
    ending (no task can start: the caller falls back to a cancel scope)."""
    try:
        return _RUN.get()
    except LookupError:
        pass
    deadlines = Deadlines()
    try:
        trio.lowlevel.spawn_system_task(deadlines.run, name="troupe: reply deadlines")
    except RuntimeError:  # the run is ending
        return None
    _RUN.set(deadlines)
    return deadlines


__all__ = ["Deadlines", "Expiring", "current"]
