"""Bounded mailboxes: a user lane with an overflow policy and an uncapped system lane.

The mailbox belongs to the actor's slot, not to an incarnation, so what is
queued survives a restart.  All of it is touched only from the trio thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

import attrs
import trio

from .errors import MailboxFull

Overflow = Literal["block", "drop_new", "drop_old", "fail"]
OVERFLOW_POLICIES: tuple[str, ...] = ("block", "drop_new", "drop_old", "fail")


def _check_capacity(_inst: object, _attr: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"mailbox capacity must be a positive int, got {value!r}")


def _check_overflow(_inst: object, _attr: object, value: str) -> None:
    if value not in OVERFLOW_POLICIES:
        raise ValueError(
            f"unknown overflow policy {value!r}; use one of {', '.join(OVERFLOW_POLICIES)}"
        )


@attrs.frozen
class Mailbox:
    """How big an actor's mailbox is and what happens when it is full.

    - ``block``: ``await ref.send`` waits for room; ``tell`` on the loop thread
      raises `MailboxFull` (it cannot wait).
    - ``drop_new`` / ``drop_old``: the newest / oldest message goes to dead
      letters with reason ``overflow``.
    - ``fail``: the sender gets `MailboxFull` (the message stays with it).
    """

    capacity: int = attrs.field(default=10_000, validator=_check_capacity)
    overflow: Overflow = attrs.field(default="block", validator=_check_overflow)


Drop = Callable[[Any, str], None]

_NO_MESSAGES: deque[Any] = deque()
"""Shared by every mailbox that never got a message (an idle actor costs no deque).
Nothing is ever appended to it: `put` swaps in a deque of the mailbox's own first."""


class ThreadRoom(Protocol):
    """The foreign-thread gate, as a mailbox sees it."""

    def reclaim(self, mailbox: MailboxQueue) -> int: ...

    def room_freed(self, mailbox: MailboxQueue) -> None: ...


class MailboxQueue:
    """The live queue behind a `Mailbox` spec: one consumer, many senders.

    Kept small because every actor has one: the system lane and the lot of
    blocked senders are made on first use.  `notify_take` is the one flag the
    consumer checks per message to learn that someone waits for room.
    """

    __slots__ = (
        "_drop",
        "_space",
        "_waiter",
        "capacity",
        "closed",
        "credited",
        "high_water",
        "notify_take",
        "overflow",
        "reserved",
        "senders_waiting",
        "system",
        "thread_credits",
        "thread_gate",
        "threads_waiting",
        "user",
    )

    def __init__(self, spec: Mailbox, drop: Drop) -> None:
        self.capacity = spec.capacity
        self.overflow = spec.overflow
        self.user: deque[Any] = _NO_MESSAGES
        self.system: deque[Any] | None = None
        self.high_water = 0
        self.closed = False
        self._drop = drop
        self._waiter: trio.lowlevel.Task | None = None
        self._space: trio.lowlevel.ParkingLot | None = None
        self.senders_waiting = 0
        # Room promised to foreign threads (see threads.py): counted as taken so
        # that messages in flight from threads never push the queue past capacity.
        self.reserved = 0
        # Threads need a credit (room reserved by the loop) only where fullness
        # must be felt by the sender; the count lives here but is guarded by the
        # gate's lock, the one piece of a mailbox a foreign thread touches.
        self.credited = spec.overflow in ("block", "fail")
        self.thread_credits = 0
        self.threads_waiting = False
        self.notify_take = False
        self.thread_gate: ThreadRoom | None = None

    def __len__(self) -> int:
        return len(self.user)

    @property
    def depth(self) -> int:
        return len(self.user) + (len(self.system) if self.system else 0)

    # -- senders ---------------------------------------------------------
    def put(self, item: Any) -> None:
        """Enqueue without waiting, applying the overflow policy."""
        if self.closed:
            self._drop(item, "stopped")
            return
        user = self.user
        if user is _NO_MESSAGES:
            user = self.user = deque()
        if len(user) + self.reserved >= self.capacity and not self._reclaim():
            policy = self.overflow
            if policy == "drop_new":
                self._drop(item, "overflow")
                return
            if policy == "drop_old":
                # Swap first, account after: dead-lettering can publish an event that
                # comes straight back to this mailbox, which must already be whole.
                dropped = user.popleft()
                user.append(item)
                if self._waiter is not None:
                    self._wake()
                self._drop(dropped, "overflow")
                return
            if policy == "fail":
                raise MailboxFull(f"mailbox full ({self.capacity} messages, overflow='fail')")
            else:
                raise MailboxFull(
                    f"mailbox full ({self.capacity} messages, overflow='block'): "
                    "tell cannot wait on the loop thread; use `await ref.send(msg)` to wait "
                    "for room, or give the actor a larger or dropping Mailbox"
                )
        user.append(item)
        if len(user) > self.high_water:
            self.high_water = len(user)
        if self._waiter is not None:
            self._wake()

    async def put_wait(self, item: Any) -> None:
        """Enqueue, waiting for room if the policy is ``block``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.overflow == "block":
            while not self.closed and not self.has_room() and not self._reclaim():
                if self._space is None:
                    self._space = trio.lowlevel.ParkingLot()
                self.senders_waiting += 1
                self.notify_take = True
                try:
                    await self._space.park()
                finally:
                    self.senders_waiting -= 1
                    self.notify_take = bool(self.senders_waiting) or self.threads_waiting
        self.put(item)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def put_system(self, item: Any) -> None:
        """System lane: not subject to capacity, handled before user messages."""
        if self.closed:
            self._drop(item, "stopped")
            return
        if self.system is None:
            self.system = deque()
        self.system.append(item)
        if self._waiter is not None:
            self._wake()

    def has_room(self) -> bool:
        return len(self.user) + self.reserved < self.capacity

    def room(self) -> int:
        return max(0, self.capacity - len(self.user) - self.reserved)

    def _reclaim(self) -> bool:
        """Take back room promised to threads but not used; True if there is room now."""
        if self.reserved and self.thread_gate is not None:
            self.reserved -= self.thread_gate.reclaim(self)
        return len(self.user) + self.reserved < self.capacity

    def put_many_reserved(self, items: list[Any]) -> None:
        """Enqueue messages from threads that hold a reservation for each."""
        self.reserved -= len(items)
        if self.closed:
            for item in items:
                self._drop(item, "stopped")
            return
        if self.user is _NO_MESSAGES:
            self.user = deque()
        self.user.extend(items)
        if len(self.user) > self.high_water:
            self.high_water = len(self.user)
        if self._waiter is not None:
            self._wake()

    def wait_for_threads(self) -> None:
        """A thread waits for room here: tell the gate when the consumer frees some."""
        self.threads_waiting = True
        self.notify_take = True

    # -- the consumer ----------------------------------------------------
    def take(self) -> Any:
        """Pop the next user message and let one blocked sender in."""
        item = self.user.popleft()
        if self.notify_take:
            self.room_made()
        return item

    def room_made(self) -> None:
        """The consumer took a message: let a blocked sender or thread in."""
        if self.senders_waiting:
            assert self._space is not None
            self._space.unpark()
        if self.threads_waiting:
            assert self.thread_gate is not None
            self.thread_gate.room_freed(self)
            self.notify_take = bool(self.senders_waiting) or self.threads_waiting

    def wake(self) -> None:
        """Wake the consumer even though nothing arrived (e.g. a stop request)."""
        if self._waiter is not None:
            self._wake()

    def _wake(self) -> None:
        task = self._waiter
        self._waiter = None
        assert task is not None
        trio.lowlevel.reschedule(task)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> None:
        """Park until something is put or `wake` is called."""
        if self.user or self.system:
            await trio.lowlevel.checkpoint()
            return
        if self._waiter is not None:
            raise RuntimeError("a mailbox has exactly one consumer")
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def close(self) -> list[Any]:
        """Refuse further messages; return what was queued (system lane first)."""
        self.closed = True
        self.threads_waiting = False
        self.notify_take = False
        rest = [*(self.system or ()), *self.user]
        self.system = None
        self.user = _NO_MESSAGES
        if self._space is not None:
            self._space.unpark_all()
        return rest
