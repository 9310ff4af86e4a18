"""`MailboxQueue`: the live queue behind a `Mailbox` spec, and the only code that touches it.

One consumer (the actor's incarnation task), many senders (refs, the bus, the
foreign-thread gate).  Two lanes: the user lane, bounded by ``capacity`` and
its overflow policy, and the system lane (stop notices, `Terminated`,
supervisor requests), not subject to capacity and taken first.

Every queue operation lives here, fast paths included: `put` (a loop-thread
``tell``), `put_wait` (``send``), the line of senders waiting for room
(`enter_line`, `wait_in_line`, `withdraw`: ``send``, ``ask`` and the bus's
``publish`` share it), `put_system`, `put_many_reserved` (a batch from foreign
threads), `take`/`get`/`parking` (the consumer; `hibernate` and `forget_sleeper`
for one that leaves its task), the room reserved for threads
(`reserve`, `unreserve`) and `statistics`.  Other modules call these methods;
none of them reads or writes the deques or counters.

The line hands over: when room is made, the mailbox itself moves the message
at the head of the line into the queue (as trio's memory channels hand a
waiting sender's value to a receiver), then wakes its sender.  So the order of
the line is the order of delivery whoever runs first, and a publisher can hold
places in several lines at once (rule 2 of the design).

The mailbox belongs to the actor's slot, not to an incarnation, so what is
queued survives a restart.  All of it is touched only from the trio thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import attrs
import trio

from .errors import MailboxFull
from .messages import Internal
from .spec import Mailbox

Drop = Callable[[Any, str], None]
"""How the mailbox hands back a message it will not deliver: ``drop(item, reason)``."""

EMPTY: Final[Any] = object()
"""What `MailboxQueue.get` returns when both lanes are empty."""

_NO_MESSAGES: deque[Any] = deque()
"""Shared by every mailbox that never got a message (an idle actor costs no deque).
Nothing is ever appended to it: the first put swaps in a deque of the mailbox's own."""

_NO_TAKE = _NO_MESSAGES.popleft
"""`MailboxQueue.take` of a mailbox that never got a message (never called: not ready)."""

_ALWAYS_READY: Final[Any] = True
"""`MailboxQueue.ready` while `take` is the slow path (which answers EMPTY itself):
always true."""


WAITING: Final = "waiting"
"""A `Ticket` whose message is still in the line."""
QUEUED: Final = "queued"
"""A `Ticket` whose message was handed over into the queue."""
STOPPED: Final = "stopped"
"""A `Ticket` whose mailbox closed first: its message was dead-lettered as ``stopped``."""
WITHDRAWN: Final = "withdrawn"
"""A `Ticket` taken back by its sender (`MailboxQueue.withdraw`): its message stays with it."""


class Ticket:
    """A place in one mailbox's line of senders waiting for room.

    Made by `MailboxQueue.enter_line`; its `state` says what became of the
    message: `WAITING`, `QUEUED`, `STOPPED` or `WITHDRAWN`.
    """

    __slots__ = ("item", "mailbox", "sender", "state", "waiter")

    def __init__(self, item: Any, sender: trio.lowlevel.Task | None, mailbox: MailboxQueue) -> None:
        self.item = item
        self.mailbox = mailbox
        """The mailbox whose line this place is in: wait and withdraw there (a slot
        that rested gets a fresh mailbox; the closed one settled its tickets)."""
        self.sender = sender
        """The task that is told (`on_let_in`) when its message is let in, if any."""
        self.state: str = WAITING
        self.waiter: trio.lowlevel.Task | None = None
        """The task parked in `MailboxQueue.wait_in_line` on this ticket, if any."""

    def _settle(self, state: str) -> None:
        """Its message was queued or dead-lettered: say which, and wake its waiter."""
        self.state = state
        if self.waiter is not None:
            trio.lowlevel.reschedule(self.waiter)
            self.waiter = None


class Sleeper(Protocol):
    """A consumer that left its task (a hibernating actor's slot): see `MailboxQueue.hibernate`."""

    def wake_up(self) -> None:
        """Something arrived: start a task to consume it.  Called once per `hibernate`."""
        ...


class ThreadRoom(Protocol):
    """The foreign-thread gate, as a mailbox sees it (see `runtime.threads`)."""

    def reclaim(self, mailbox: MailboxQueue) -> int:
        """Take back room lent to threads for later and not used yet (never room for
        messages already sent); return how much."""
        ...

    def room_freed(self, mailbox: MailboxQueue, force: bool = False) -> bool:
        """Room was made: let threads waiting for it in (their messages are handed
        over with `put_many_reserved`, from inside this call); True once no thread
        waits for this mailbox any more.  The gate may wait for more room to wake
        threads in batches; with `force` (their turn: loop senders wait too) it
        lets in as many as fit now."""
        ...


@attrs.frozen
class MailboxStatistics:
    """What `MailboxQueue.statistics` reports (like trio's `MemoryChannelStatistics`)."""

    depth: int
    """User messages queued now."""
    system_depth: int
    """System-lane items queued now (stop notices, `Terminated`, supervisor requests)."""
    capacity: int
    """Most user messages the mailbox holds, room reserved for threads included."""
    overflow: str
    """The overflow policy: ``block``, ``drop_new``, ``drop_old`` or ``fail``."""
    high_water: int
    """The most user messages ever queued at once."""
    reserved: int
    """Room promised to foreign threads and not yet used by their messages."""
    senders_waiting: int
    """Messages in the line of senders waiting for room (`put_wait`, a publish)."""
    threads_waiting: bool
    """Whether foreign threads wait for room (the gate is told when some is made)."""
    closed: bool
    """Whether the slot stopped for good, or rests (a ``transient`` child that stopped
    normally: its next incarnation gets a fresh mailbox); puts are dead-lettered as
    ``stopped``."""


class MailboxQueue:
    """The live queue of one slot.  Loop thread only.

    Kept small because every actor has one: the system lane and the line of
    waiting senders are made on first use.
    """

    __slots__ = (
        "_closed",
        "_drop",
        "_gate",
        "_high_water",
        "_limit",
        "_line",
        "_line_served",
        "_on_let_in",
        "_reserved",
        "_room_wanted",
        "_system",
        "_threads_waiting",
        "_user",
        "_waiter",
        "capacity",
        "overflow",
        "ready",
        "reserves_room",
        "take",
    )

    def __init__(
        self,
        spec: Mailbox,
        drop: Drop,
        gate: ThreadRoom | None = None,
        on_let_in: Callable[[trio.lowlevel.Task, MailboxQueue], None] | None = None,
        high_water: int = 0,
    ) -> None:
        """`drop(item, reason)` accounts for what is not delivered; `gate` is the
        foreign-thread gate; `on_let_in(task, mailbox)` is told of each waiting
        sender's message let in (the sender may not have run yet); `high_water`
        carries on that of the slot's earlier mailbox, if any."""
        self.capacity = spec.capacity
        self.overflow = spec.overflow
        # Threads need room reserved by the loop before they send only where fullness
        # must be felt by the sender (see runtime.threads).
        self.reserves_room = spec.overflow in ("block", "fail")
        self._user: deque[Any] = _NO_MESSAGES
        self._system: deque[Any] | None = None
        self._high_water = high_water
        self._closed = False
        self._drop = drop
        self._gate = gate
        self._on_let_in = on_let_in
        self._waiter: trio.lowlevel.Task | Sleeper | None = None  # the consumer to wake
        self._line: deque[Ticket] | None = None  # senders waiting for room, made on first use
        self._line_served = 0  # let in from the line since waiting threads last got room
        self._reserved = 0  # room promised to foreign threads, counted as taken
        self._limit = self.capacity  # capacity - reserved, 0 once closed: `put`'s one test
        self._threads_waiting = False
        self._room_wanted = False  # someone (a sender or a thread) waits for room
        # The consumer's pair: `ready` is true when `take()` has something to do.
        # While only user mail is queued (no system item, nobody waiting for room) they
        # are the user deque itself (true while it holds a message: no call at all) and
        # its popleft (no Python call per message); otherwise `_ALWAYS_READY` and
        # `_take_slow`, which answers EMPTY when empty.
        self.ready: Any = _NO_MESSAGES
        self.take: Callable[[], Any] = _NO_TAKE

    # -- queries -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._user)

    @property
    def depth(self) -> int:
        """Messages queued now, both lanes."""
        return len(self._user) + (len(self._system) if self._system else 0)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def high_water(self) -> int:
        return self._high_water

    def has_room(self) -> bool:
        """Whether one more user message fits now (reserved room counts as taken)."""
        return len(self._user) < self._limit

    def must_wait(self) -> bool:
        """Whether `put_wait` would wait now: a ``block`` mailbox that is full, or
        has senders in its line (a new one queues behind them).

        Room lent to threads and not used yet is taken back first (as `put`
        does), so it never makes a loop-thread sender wait.  (A line exists only
        while the mailbox is full: room made is handed to the line at once.)
        """
        if len(self._user) < self._limit or self.overflow != "block" or self._closed:
            return False
        return bool(self._line) or not self._reclaim()

    def room(self) -> int:
        """How many more user messages fit now."""
        return max(0, self.capacity - len(self._user) - self._reserved)

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            depth=len(self._user),
            system_depth=len(self._system) if self._system else 0,
            capacity=self.capacity,
            overflow=self.overflow,
            high_water=self._high_water,
            reserved=self._reserved,
            senders_waiting=len(self._line) if self._line else 0,
            threads_waiting=self._threads_waiting,
            closed=self._closed,
        )

    # -- senders -----------------------------------------------------------
    def put(self, item: Any) -> Any:
        """Enqueue without waiting, applying the overflow policy.  Never blocks.

        Returns None when `item` was queued and nothing was pushed out;
        otherwise the message that was dead-lettered instead (`item` itself
        under ``drop_new`` or once the mailbox is closed, the oldest under
        ``drop_old``).  Raises `MailboxFull` under ``fail`` and ``block`` (a
        loop-thread sender cannot wait: use `put_wait`); nothing is queued then.
        """
        user = self._user
        n = len(user)
        if n < self._limit:  # room, and open
            # The fast path: room and open.  Only the first message allocates a deque.
            if user is _NO_MESSAGES:
                user = self._user = deque()
                self._refresh_take()
            user.append(item)
            n += 1
            if n > self._high_water:
                self._high_water = n
            if self._waiter is not None:
                self._wake()
            return None
        return self._put_slow(item)

    def _put_slow(self, item: Any) -> Any:
        if self._closed:
            self._drop(item, "stopped")
            return item
        if self._reclaim():
            self._hand_over()  # the line first: it was there before this item
            if self.has_room():
                return self.put(item)
        policy = self.overflow
        if policy == "drop_old" and not issubclass(type(item), Internal):
            # Swap first, account after: dead-lettering can publish an event that
            # comes straight back to this mailbox, which must already be whole.
            user = self._user  # full, so not empty: dropping mailboxes reserve no room
            dropped = user.popleft()
            user.append(item)
            if self._waiter is not None:
                self._wake()
            self._drop(dropped, "overflow")
            return dropped
        if policy == "drop_new" or policy == "drop_old":  # an `Internal` one never evicts
            self._drop(item, "overflow")
            return item
        if policy == "fail":
            raise MailboxFull(f"mailbox full ({self.capacity} messages, overflow='fail')")
        raise MailboxFull(
            f"mailbox full ({self.capacity} messages, overflow='block'): "
            "tell cannot wait on the loop thread; use `await ref.send(msg)` to wait "
            "for room, or give the actor a larger or dropping Mailbox"
        )

    async def put_wait(self, item: Any) -> None:
        """Enqueue, waiting for room if the policy is ``block`` (others: like `put`).

        Blocks while a ``block`` mailbox is full, and behind senders already
        waiting: one FIFO line per mailbox for `send`, `ask` and `publish`
        (see `enter_line`); a loop-thread `put` never waits and takes free
        room, which there is only while nobody waits in the line.
        Cancellation while waiting leaves nothing behind: the item was not
        queued and stays with the caller.  Once the item is queued the call is
        not cancelled any more.  If the mailbox closes meanwhile, the item is
        dead-lettered as ``stopped`` (and the call returns).  Raises
        `MailboxFull` under ``fail``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.must_wait():
            ticket = self.enter_line(item, trio.lowlevel.current_task())
            if ticket.state is WAITING:
                await self.wait_in_line(ticket)
                return
        else:
            self.put(item)
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- the line of senders waiting for room ----------------------------------
    def enter_line(self, item: Any, sender: trio.lowlevel.Task | None = None) -> Ticket:
        """Take a place at the end of this mailbox's line for `item`.  Never blocks.

        For a ``block`` mailbox where `must_wait` is true (otherwise use
        `put`).  When room is made, the mailbox hands the item at the head of
        the line over into its queue: the items are queued in the order their
        tickets were taken.  Follow the returned `Ticket` with `wait_in_line`
        (or `withdraw`).  `sender`, if given, is told to `on_let_in` when its
        item is let in.  Its state may already be `QUEUED` (room that was lent
        to threads and not used could be taken back at once).
        """
        ticket = Ticket(item, sender, self)
        line = self._line
        if line is None:
            line = self._line = deque()
        line.append(ticket)
        self._room_wanted = True
        self._slow_take()
        if len(line) == 1 and self._reclaim():
            self._hand_over()
        return ticket

    async def wait_in_line(self, ticket: Ticket) -> None:
        """Block until `ticket`'s item was queued (or dead-lettered as ``stopped``
        because the mailbox closed).  Returns at once if that happened already.

        Cancelled while waiting, the ticket is withdrawn (its item was not
        queued and stays with the caller) and `trio.Cancelled` propagates.
        Once the item is queued, the wait is not cancelled any more.  When it
        does not wait, it is not a checkpoint (the caller decides).
        """
        if ticket.state is not WAITING:
            return
        if ticket.waiter is not None:
            raise RuntimeError("a ticket has exactly one task waiting on it")
        ticket.waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            ticket.waiter = None
            self.withdraw(ticket)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def withdraw(self, ticket: Ticket) -> bool:
        """Take `ticket`'s item out of the line; False if it was queued or stopped already.

        The item is the caller's again (nothing is dead-lettered).
        """
        if ticket.state is not WAITING:
            return False
        ticket.state = WITHDRAWN
        assert self._line is not None
        self._line.remove(ticket)
        if not self._line:
            self._room_wanted = self._threads_waiting
            self._refresh_take()
        return True

    def _hand_over(self) -> None:
        """Move items from the head of the line into the queue while they fit."""
        line = self._line
        if not line:
            return
        fits = self._limit - len(self._user)
        let_in = [line.popleft() for _ in range(min(fits, len(line)))]
        if not let_in:
            return
        self._line_served += len(let_in)
        self._queue_all([ticket.item for ticket in let_in])
        for ticket in let_in:
            ticket._settle(QUEUED)
            if ticket.sender is not None and self._on_let_in is not None:
                self._on_let_in(ticket.sender, self)
        if not line:
            self._room_wanted = self._threads_waiting
            self._refresh_take()

    def _queue_all(self, items: list[Any]) -> None:
        """Append `items` to the user lane (past any limit: the caller checked), note
        the high water and wake the consumer."""
        if self._user is _NO_MESSAGES:
            self._user = deque()
            self._refresh_take()
        self._user.extend(items)
        if len(self._user) > self._high_water:
            self._high_water = len(self._user)
        if self._waiter is not None:
            self._wake()

    def put_handed_over(self, items: list[Any]) -> None:
        """Take the user messages a stopping slot hands over (``terminate_child(...,
        hand_over_to=)``), in their order, past the capacity if need be: they were
        counted in the mailbox they come from, so the total stays within the two
        capacities, and a hand-over drops nothing.  Never blocks.  A closed
        mailbox dead-letters them as ``stopped``.
        """
        if self._closed:
            for item in items:
                self._drop(item, "stopped")
            return
        if items:
            self._queue_all(items)

    def put_system(self, item: Any) -> None:
        """System lane: not subject to capacity, handled before user messages.

        A closed mailbox dead-letters the item as ``stopped`` instead.
        """
        if self._closed:
            self._drop(item, "stopped")
            return
        if self._system is None:
            self._system = deque()
        self._system.append(item)
        self._slow_take()
        if self._waiter is not None:
            self._wake()

    # -- room for foreign threads (called by the gate, on the loop thread) ----
    def reserve(self, limit: int) -> int:
        """Reserve up to `limit` messages' room for threads; return how much was reserved.

        A closed mailbox grants one, so that the thread's message is
        delivered and dead-lettered as ``stopped`` instead of waiting forever.
        """
        if self._closed:
            return 1
        granted = min(self.room(), limit)
        self._set_reserved(self._reserved + granted)
        return granted

    def unreserve(self, count: int) -> None:
        """Give back room reserved for threads that will not use it."""
        self._set_reserved(self._reserved - count)
        if count and self._room_wanted:
            self._room_made()

    def put_many_reserved(self, items: list[Any]) -> None:
        """Enqueue messages from threads that hold a reservation for each."""
        self._set_reserved(self._reserved - len(items))
        if self._closed:
            for item in items:
                self._drop(item, "stopped")
            return
        self._queue_all(items)

    def wait_for_threads(self) -> None:
        """Threads wait for room here: tell the gate (`room_freed`) whenever some is
        made, until it answers that none waits any more."""
        if not self._closed:
            self._threads_waiting = True
            self._room_wanted = True
            self._slow_take()

    def _reclaim(self) -> bool:
        """Take back room promised to threads but not used; True if there is room now."""
        if self._reserved and self._gate is not None:
            taken = self._gate.reclaim(self)
            if taken:
                self._set_reserved(self._reserved - taken)
        return len(self._user) < self._limit

    def _set_reserved(self, reserved: int) -> None:
        self._reserved = max(0, reserved)
        if not self._closed:
            self._limit = self.capacity - self._reserved

    # -- the consumer --------------------------------------------------------
    def get(self) -> Any:
        """The next item, system lane first; `EMPTY` if there is none.  Never blocks.

        Taking a user message hands the room made to the head of the line of
        waiting senders (or to waiting threads).
        (`ready` and `take()` do the same for a loop that wants no Python call per
        message: ``item = take() if ready else EMPTY``; `take` may say EMPTY too.)
        """
        return self.take() if self.ready else EMPTY

    def _take_slow(self) -> Any:
        """`take` when there is more to do than pop a user message."""
        system = self._system
        if system:
            item = system.popleft()
            if not system:
                self._refresh_take()
            return item
        if not self._user:
            return EMPTY
        item = self._user.popleft()
        if self._room_wanted:
            self._room_made()  # refreshes `take`
        else:
            self._refresh_take()
        return item

    def _refresh_take(self) -> None:
        if self._system or self._room_wanted or self._closed:
            self._slow_take()
        else:
            user = self._user
            self.take = user.popleft
            self.ready = user

    def _slow_take(self) -> None:
        self.take = self._take_slow
        self.ready = _ALWAYS_READY

    def parking(self) -> Callable[[Any], trio.lowlevel.Abort]:
        """Register the current task as the consumer to wake; return the abort function.

        Use as ``await trio.lowlevel.wait_task_rescheduled(mailbox.parking())``
        right after `get` returned `EMPTY` (no checkpoint in between): the next
        put, `wake` or `close` reschedules the task.  Raises RuntimeError if
        another task already waits (a mailbox has exactly one consumer).
        """
        if self._waiter is not None:
            raise RuntimeError("a mailbox has exactly one consumer")
        self._waiter = trio.lowlevel.current_task()
        return self._abort

    def hibernate(self, sleeper: Sleeper) -> None:
        """The consumer leaves without a task: the next put (either lane) or `wake`
        calls ``sleeper.wake_up()`` (once) instead of rescheduling a task; `close`
        does not (nothing can arrive after it: the owner ends the sleeper).  Never blocks.

        If something is queued already, `wake_up` is called at once.  Raises
        RuntimeError if a consumer is registered already (a mailbox has exactly one).
        """
        if self._waiter is not None:
            raise RuntimeError("a mailbox has exactly one consumer")
        if (self._user or self._system) and not self._closed:
            sleeper.wake_up()
            return
        self._waiter = sleeper

    def forget_sleeper(self) -> None:
        """Take back a `hibernate` that was not woken (the consumer ended for good).
        Never blocks."""
        if self._waiter is not None and type(self._waiter) is not trio.lowlevel.Task:
            self._waiter = None

    async def wait(self) -> None:
        """Block until something is queued or `wake` is called (at once if not empty).

        Cancellation is safe: the consumer is simply no longer registered.
        """
        if self._user or self._system:
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.wait_task_rescheduled(self.parking())

    def wake(self) -> None:
        """Wake the consumer even though nothing arrived (e.g. a stop request)."""
        if self._waiter is not None:
            self._wake()

    def _room_made(self) -> None:
        """Room was made: hand it to whoever waits for it.

        Loop senders (the line) and foreign threads (the gate's line) take
        turns while both wait: the line is let in up to a quarter of the
        mailbox (at least one message), then the threads get what is free,
        then the line again, so neither side starves the other.  With only
        threads waiting, the gate wakes them in batches as it sees fit.
        """
        if self._threads_waiting and self._gate is not None:
            competing = bool(self._line)
            if not competing or self._line_served >= max(1, self.capacity // 4):
                before = len(self._user)
                if self._gate.room_freed(self, competing):
                    self._threads_waiting = False
                if not self._threads_waiting or len(self._user) > before:
                    self._line_served = 0  # the threads had their turn
        if self._line:
            self._hand_over()
        self._room_wanted = bool(self._line) or self._threads_waiting
        self._refresh_take()

    def _wake(self) -> None:
        waiter = self._waiter
        self._waiter = None
        if type(waiter) is trio.lowlevel.Task:
            trio.lowlevel.reschedule(waiter)
        else:
            assert waiter is not None
            waiter.wake_up()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def close(self, hand_over: bool = False) -> tuple[list[Any], list[Any]]:
        """Refuse further messages; return what was queued: ``(system, user)``.

        Blocked senders' items are dead-lettered as ``stopped`` and their
        tickets say `STOPPED`; with `hand_over` they are returned at the end of
        the user items instead (the caller passes them on) and their tickets
        say `QUEUED`.  Threads waiting for room are let go (the gate delivers
        their messages, dead-lettered the same way), and a parked consumer task
        is woken (a hibernating one is not: nothing can arrive for it).
        """
        self._closed = True
        self._limit = 0
        threads_waiting = self._threads_waiting
        self._threads_waiting = False
        self._room_wanted = False
        self._reserved = 0
        system = list(self._system or ())
        user = list(self._user)
        self._system = None
        self._user = _NO_MESSAGES
        self._slow_take()  # closed: it answers EMPTY
        line = self._line
        self._line = None
        for ticket in line or ():
            if hand_over:
                user.append(ticket.item)
                ticket._settle(QUEUED)
            else:
                self._drop(ticket.item, "stopped")
                ticket._settle(STOPPED)
        if threads_waiting and self._gate is not None:
            self._gate.room_freed(self)
        if type(self._waiter) is trio.lowlevel.Task:
            self._wake()  # a hibernating consumer is not woken: nothing can arrive any more
        return system, user


__all__ = [
    "EMPTY",
    "QUEUED",
    "STOPPED",
    "WAITING",
    "WITHDRAWN",
    "MailboxQueue",
    "MailboxStatistics",
    "Sleeper",
    "ThreadRoom",
    "Ticket",
]
