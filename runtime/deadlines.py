"""Deadlines of reply waits, kept by one task of the system instead of a cancel scope each.

An ask waits for its reply with a deadline.  A `trio.CancelScope` with a
deadline costs more to enter and leave than the rest of an ask round trip, so
a reply wait does not make one while its system's `Deadlines` runs: it
registers its deadline here (a push on a heap) and takes it off again when it
ends (a flag; ended entries are pruned in bulk).  The keeper (`run`, a task
of the system) sleeps until the earliest deadline and calls `expire()` on the
waits still registered when it passes.  When the keeper stops (the system
closes), it calls `unkept()` on the waits still registered: they keep their
deadline themselves from then on.

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
    """A wait with a deadline, as the keeper sees it.  Both calls come on the loop
    thread, at most one of them, and must not raise."""

    def expire(self) -> None:
        """The deadline passed and the wait is still registered."""
        ...

    def unkept(self) -> None:
        """The keeper stopped before the deadline: keep it yourself from now on."""
        ...


Entry = list[Any]
"""``[deadline, number, waiter]``; the waiter is None once the wait ended."""


class Deadlines:
    """The deadlines of one system's reply waits, and the task that keeps them."""

    __slots__ = ("_dead", "_heap", "_numbers", "_ran", "_scope", "_wake_at", "running")

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._numbers = itertools.count()  # ties on the deadline: first come, first expired
        self._dead = 0  # entries on the heap whose wait ended
        self._wake_at = math.inf  # when the keeper wakes next
        self._scope: trio.CancelScope | None = None  # the keeper's sleep, while it sleeps
        self._ran = False
        self.running = False
        """True while the keeper runs: only then may a wait `add` its deadline."""

    def add(self, deadline: float, waiter: Expiring) -> Entry:
        """Call ``waiter.expire()`` at `deadline` (a `trio.current_time` time) unless
        `discard` is called first.  Only while `running`.  Never blocks."""
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
        """The keeper, for the life of the system: sleep until the earliest deadline,
        expire what is due, repeat.  Cancelled, it hands the waits still registered
        back to themselves (`unkept`) and returns.  Runs once."""
        if self._ran:
            raise RuntimeError("a Deadlines is kept once, by one task")
        self._ran = True
        heap = self._heap
        self.running = True
        try:
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
        finally:
            self.running = False
            self._scope = None
            left = []
            for entry in heap:
                if entry[2] is not None:
                    left.append(entry[2])
                    entry[2] = None  # its wait's discard() is a no-op now
            heap.clear()
            self._dead = 0
            self._wake_at = math.inf
            for waiter in left:
                waiter.unkept()


__all__ = ["PRUNE_AT", "Deadlines", "Expiring"]
